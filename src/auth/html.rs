//! Escaping text for the few HTML pages the login flows show (the gateway's
//! consent page, the CLI's loopback "logged in" page).

/// `text` with `& < > " '` replaced by entities, safe inside elements and
/// quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

//! Label selectors over a server's labels, in the string form fan-out and
//! policies both take: comma-separated terms, all of which must hold:
//! `key=value` (or `key==value`), `key!=value`, `key` (present), `!key`
//! (absent).

use std::collections::BTreeMap;

/// One parsed selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    terms: Vec<Term>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Term {
    key: String,
    /// `None`: a presence test.
    value: Option<String>,
    /// `false` for `!=` and `!key`.
    positive: bool,
}

impl LabelSelector {
    /// Parses `text`; the error names the term at fault.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, value, positive) = if let Some((k, v)) = term.split_once("!=") {
                (k.trim(), Some(v.trim()), false)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k.trim(), Some(v.trim()), true)
            } else if let Some(k) = term.strip_prefix('!') {
                (k.trim(), None, false)
            } else {
                (term, None, true)
            };
            if key.is_empty() {
                return Err(format!(
                    "label selector term {term:?} has no key; use key=value, key!=value, key or !key"
                ));
            }
            terms.push(Term {
                key: key.to_string(),
                value: value.map(str::to_string),
                positive,
            });
        }
        Ok(Self { terms })
    }

    /// True when `labels` satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|term| {
            let found = labels.get(&term.key).map(String::as_str);
            let holds = match &term.value {
                Some(v) => found == Some(v.as_str()),
                None => found.is_some(),
            };
            holds == term.positive
        })
    }
}

/// True when `value` reads as a label selector rather than a name.
pub fn is_selector(value: &str) -> bool {
    value.contains('=') || value.starts_with('!')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_term_form_holds_or_not() {
        let prod_eu = labels(&[("env", "prod"), ("region", "eu")]);
        for (selector, want) in [
            ("env=prod", true),
            ("env==prod", true),
            ("env=dev", false),
            ("env!=dev", true),
            ("env=prod,region!=eu", false),
            ("region", true),
            ("tier", false),
            ("!tier", true),
            ("!env", false),
            ("", true),
        ] {
            let parsed = LabelSelector::parse(selector).unwrap();
            assert_eq!(parsed.matches(&prod_eu), want, "{selector:?}");
        }
    }

    #[test]
    fn a_term_without_a_key_is_named() {
        let error = LabelSelector::parse("env=prod,=x").unwrap_err();
        assert!(error.contains("\"=x\" has no key"), "{error}");
    }
}

//! Rendering a set's template for one member: `{{key}}` placeholders in
//! every string of the MCPServer spec, its name and its labels. A key the
//! member does not have is an error naming the field and the keys it has,
//! never a silent empty string.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Member;
use crate::api::{MCPServerSpec, MemberTemplate};

/// Longest rendered string; a template cannot grow without bound.
const MAX_RENDERED: usize = 64 * 1024;

/// One member's MCPServer, rendered.
#[derive(Debug, PartialEq)]
pub(super) struct Rendered {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: MCPServerSpec,
}

/// Renders `template` for `member`; the error names the template field.
pub(super) fn render_member(
    template: &MemberTemplate,
    member: &Member,
) -> Result<Rendered, String> {
    let name = render(&template.metadata.name, member)
        .map_err(|e| format!("template.metadata.name: {e}"))?;
    if let Err(why) = check_dns_name(&name) {
        return Err(format!(
            "template.metadata.name renders to {name:?}, which {why}"
        ));
    }
    let mut labels = member.labels.clone();
    for (key, value) in &template.metadata.labels {
        let value =
            render(value, member).map_err(|e| format!("template.metadata.labels.{key}: {e}"))?;
        labels.insert(key.clone(), value);
    }
    let mut spec = serde_json::to_value(&template.spec)
        .map_err(|_| "template.spec: cannot be read".to_string())?;
    render_strings(&mut spec, "template.spec", member)?;
    let mut spec: MCPServerSpec = serde_json::from_value(spec)
        .map_err(|e| format!("template.spec: renders to an invalid spec: {e}"))?;
    if let Some(family) = spec.family.as_mut() {
        // The inventory's name is the instance, unless the template says otherwise.
        if family.instance.is_none() {
            family.instance = Some(member.name.clone());
        }
        for alias in &member.aliases {
            if !family.aliases.contains(alias) {
                family.aliases.push(alias.clone());
            }
        }
    }
    Ok(Rendered { name, labels, spec })
}

/// Substitutes placeholders in every string inside `value` (map keys stay).
fn render_strings(value: &mut Value, path: &str, member: &Member) -> Result<(), String> {
    match value {
        Value::String(text) => {
            *text = render(text, member).map_err(|e| format!("{path}: {e}"))?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                render_strings(item, &format!("{path}[{i}]"), member)?;
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields.iter_mut() {
                render_strings(item, &format!("{path}.{key}"), member)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Substitutes `{{key}}` (spaces inside the braces allowed) in `text`.
pub(super) fn render(text: &str, member: &Member) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "a placeholder opened with {{ is never closed with }}".to_string())?;
        let key = after[..end].trim();
        let value = member.lookup(key).ok_or_else(|| {
            format!(
                "unknown placeholder {{{{{key}}}}} (member {:?} has: {})",
                member.name,
                member.keys().join(", ")
            )
        })?;
        out.push_str(value);
        if out.len() > MAX_RENDERED {
            return Err(format!("renders to more than {} KiB", MAX_RENDERED / 1024));
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A DNS-1123 subdomain: lowercase letters, digits, `-` and `.`, at most
/// 253 characters, starting and ending with a letter or digit.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 253 {
        return Err("is not a valid name (1 to 253 characters)");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err("is not a valid DNS-1123 name (lowercase letters, digits, '-' and '.')");
    }
    if !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
        return Err("is not a valid DNS-1123 name (it must start and end with a letter or digit)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FamilySpec, TemplateMetadata};

    fn member() -> Member {
        Member {
            name: "cluster-a".into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
            aliases: vec!["prod-eu".into()],
            values: [("kubeconfig".to_string(), "/k/a.yaml".to_string())].into(),
        }
    }

    fn template(name: &str, args: &[&str]) -> MemberTemplate {
        MemberTemplate {
            metadata: TemplateMetadata {
                name: name.into(),
                labels: [("tier".to_string(), "{{labels.env}}-tier".to_string())].into(),
            },
            spec: MCPServerSpec {
                server_type: crate::api::ServerType::Stdio,
                command: Some("kubernetes-mcp-server".into()),
                args: args.iter().map(|a| a.to_string()).collect(),
                family: Some(FamilySpec {
                    name: "kubernetes".into(),
                    aliases: vec!["{{name}}-short".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn placeholders_fill_name_labels_and_every_string_of_the_spec() {
        let rendered = render_member(
            &template("{{ name }}-kubernetes", &["--kubeconfig", "{{kubeconfig}}"]),
            &member(),
        )
        .unwrap();
        assert_eq!(rendered.name, "cluster-a-kubernetes");
        assert_eq!(rendered.labels["env"], "prod", "inventory labels kept");
        assert_eq!(rendered.labels["tier"], "prod-tier");
        assert_eq!(rendered.spec.args, ["--kubeconfig", "/k/a.yaml"]);
        let family = rendered.spec.family.unwrap();
        assert_eq!(family.instance.as_deref(), Some("cluster-a"));
        assert_eq!(family.aliases, ["cluster-a-short", "prod-eu"]);
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_the_field_and_the_known_keys() {
        let error =
            render_member(&template("{{name}}", &["{{labels.region}}"]), &member()).unwrap_err();
        assert!(
            error.starts_with("template.spec.args[0]: unknown placeholder {{labels.region}}"),
            "{error}"
        );
        assert!(error.contains("labels.env"), "{error}");
        let error = render_member(&template("{{name", &[]), &member()).unwrap_err();
        assert!(error.contains("never closed"), "{error}");
    }

    #[test]
    fn a_name_that_is_not_dns_1123_is_refused() {
        for bad in ["{{name}}_x", "UPPER-{{name}}", "-{{name}}", ""] {
            let error = render_member(&template(bad, &[]), &member()).unwrap_err();
            assert!(
                error.starts_with("template.metadata.name"),
                "{bad}: {error}"
            );
        }
    }
}

//! Semantic validation of a ToolPolicy: what serde cannot check (rule
//! names, patterns, label selectors). Every finding names the field to fix,
//! as MCPServer validation does.

use std::collections::HashSet;

use super::policy::{PolicyMatch, ToolPolicySpec};
use super::selector::LabelSelector;
use super::validate::{ValidationError, is_name_char};

fn err(field: String, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field,
        message: message.into(),
    }
}

/// The most rules one policy may hold (each call is checked against all).
pub const MAX_RULES: usize = 1_000;

/// Checks `metadata.name` and the rules; returns every problem found.
pub fn validate_policy(name: &str, spec: &ToolPolicySpec) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    if name.is_empty() {
        errors.push(err("metadata.name".into(), "is required"));
    } else if name.len() > 253 || !name.chars().all(is_name_char) {
        errors.push(err(
            "metadata.name".into(),
            "must be at most 253 characters of [A-Za-z0-9._-]",
        ));
    }
    if spec.rules.len() > MAX_RULES {
        errors.push(err(
            "spec.rules".into(),
            format!(
                "has {} rules; a policy holds at most {MAX_RULES} (split it)",
                spec.rules.len()
            ),
        ));
    }
    let mut names = HashSet::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(rule_name) = &rule.name {
            if rule_name.is_empty() || rule_name.len() > 63 || !rule_name.chars().all(is_name_char)
            {
                errors.push(err(
                    format!("{at}.name"),
                    "must be 1 to 63 characters of [A-Za-z0-9._-]",
                ));
            } else if !names.insert(rule_name.as_str()) {
                errors.push(err(
                    format!("{at}.name"),
                    format!("{rule_name:?} names another rule of this policy too"),
                ));
            }
        }
        check_match(&format!("{at}.match"), &rule.matches, &mut errors);
        if let Some(except) = &rule.except {
            check_match(&format!("{at}.except"), except, &mut errors);
        }
    }
    errors
}

fn check_match(at: &str, matches: &PolicyMatch, errors: &mut Vec<ValidationError>) {
    let lists = [
        ("subjects", &matches.subjects),
        ("groups", &matches.groups),
        ("clients", &matches.clients),
        ("families", &matches.families),
        ("servers", &matches.servers),
        ("instances", &matches.instances),
        ("tools", &matches.tools),
    ];
    for (field, values) in lists {
        for (i, value) in values.iter().enumerate() {
            if value.trim().is_empty() {
                errors.push(err(
                    format!("{at}.{field}[{i}]"),
                    "must not be empty (use \"*\" for any)",
                ));
            }
        }
    }
    if let Some(labels) = &matches.labels
        && let Err(why) = LabelSelector::parse(labels)
    {
        errors.push(err(format!("{at}.labels"), why));
    }
    let targets_anonymous = matches.anonymous == Some(true);
    let names_a_person =
        !matches.subjects.is_empty() || !matches.groups.is_empty() || !matches.clients.is_empty();
    if targets_anonymous && names_a_person {
        errors.push(err(
            format!("{at}.anonymous"),
            "anonymous callers have no subject, groups or client; this matches no caller",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::policy::{PolicyEffect, PolicyRule};

    fn rule(name: Option<&str>, matches: PolicyMatch) -> PolicyRule {
        PolicyRule {
            name: name.map(str::to_string),
            effect: PolicyEffect::Deny,
            matches,
            except: None,
            message: None,
        }
    }

    #[test]
    fn each_problem_names_its_field() {
        let spec = ToolPolicySpec {
            rules: vec![
                rule(Some("a"), PolicyMatch::default()),
                rule(Some("a"), PolicyMatch::default()),
                rule(
                    Some("bad name"),
                    PolicyMatch {
                        labels: Some("env=prod,=x".into()),
                        tools: vec!["".into()],
                        ..Default::default()
                    },
                ),
                rule(
                    None,
                    PolicyMatch {
                        anonymous: Some(true),
                        groups: vec!["sre".into()],
                        ..Default::default()
                    },
                ),
            ],
        };
        let fields: Vec<String> = validate_policy("p", &spec)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.rules[1].name",
                "spec.rules[2].name",
                "spec.rules[2].match.tools[0]",
                "spec.rules[2].match.labels",
                "spec.rules[3].match.anonymous",
            ]
        );
        assert_eq!(
            validate_policy("no/slash", &ToolPolicySpec::default())[0].field,
            "metadata.name"
        );
        assert!(validate_policy("fine", &ToolPolicySpec::default()).is_empty());
    }
}

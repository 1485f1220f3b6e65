//! Instance selection for folded tools: what an agent may pass as the
//! instance argument, and the error that helps it succeed on the next try.
//!
//! Accepted: a member's full server name, its instance name or any alias
//! (exact after case folding; a name matching two members is an error),
//! `"*"` (every member), a JSON array of names, or a label selector over the
//! servers' labels (`env=prod,region!=us`, `tier`, `!canary`).

use serde_json::Value;

use super::family::Instance;
use crate::api::{LabelSelector, is_selector};

/// The members a call selected, by index into the tool's member list.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection {
    /// One named instance: the reply is that instance's own result.
    One(usize),
    /// `"*"`, a list or a selector: the reply has one section per instance.
    Many(Vec<usize>),
}

/// Why the instance argument could not be resolved; the text is meant for the agent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectError(pub String);

fn valid_values(members: &[Instance]) -> String {
    let names: Vec<String> = members
        .iter()
        .map(|m| {
            if m.aliases.is_empty() {
                format!("{:?}", m.instance)
            } else {
                format!("{:?} (aliases: {})", m.instance, m.aliases.join(", "))
            }
        })
        .collect();
    names.join(", ")
}

/// Every name a member answers to.
fn names_of(member: &Instance) -> impl Iterator<Item = &str> {
    [member.server.as_ref(), member.instance.as_str()]
        .into_iter()
        .chain(member.aliases.iter().map(String::as_str))
}

/// Resolves one name to one member.
fn by_name(members: &[Instance], name: &str, arg: &str) -> Result<usize, SelectError> {
    let wanted = name.trim().to_lowercase();
    let matches: Vec<usize> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| names_of(m).any(|n| n.to_lowercase() == wanted))
        .map(|(i, _)| i)
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => {
            let closest = members
                .iter()
                .flat_map(names_of)
                .map(|n| (strsim::damerau_levenshtein(&wanted, &n.to_lowercase()), n))
                .min_by_key(|(distance, _)| *distance)
                .filter(|(distance, n)| *distance <= (n.len() / 2).max(2))
                .map(|(_, n)| format!(" Did you mean {n:?}?"))
                .unwrap_or_default();
            Err(SelectError(format!(
                "unknown {arg} {name:?}.{closest} Valid values: {}; or \"*\" for all, a list, or a label selector like \"env=prod\".",
                valid_values(members)
            )))
        }
        many => {
            let which: Vec<&str> = many.iter().map(|i| members[*i].instance.as_str()).collect();
            Err(SelectError(format!(
                "{arg} {name:?} is ambiguous: it names {}; pass one of those instance names instead",
                which.join(" and ")
            )))
        }
    }
}

/// Members whose labels satisfy `selector`.
fn by_selector(members: &[Instance], selector: &str, arg: &str) -> Result<Vec<usize>, SelectError> {
    let parsed = LabelSelector::parse(selector)
        .map_err(|why| SelectError(format!("{arg} {selector:?}: {why}")))?;
    let selected: Vec<usize> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| parsed.matches(&m.labels))
        .map(|(i, _)| i)
        .collect();
    if selected.is_empty() {
        let labels: Vec<String> = members
            .iter()
            .map(|m| {
                let pairs: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}: {{{}}}", m.instance, pairs.join(", "))
            })
            .collect();
        return Err(SelectError(format!(
            "label selector {selector:?} matches no instance that has this tool. Instance labels: {}",
            labels.join("; ")
        )));
    }
    Ok(selected)
}

/// Resolves the instance argument's value against `members`.
pub fn select(
    members: &[Instance],
    value: Option<&Value>,
    arg: &str,
) -> Result<Selection, SelectError> {
    match value {
        None | Some(Value::Null) => Err(SelectError(format!(
            "missing required argument {arg:?}: pass one of {}, or \"*\" for all",
            valid_values(members)
        ))),
        Some(Value::String(s)) if s.trim() == "*" => {
            Ok(Selection::Many((0..members.len()).collect()))
        }
        Some(Value::String(s)) if is_selector(s) => {
            by_selector(members, s, arg).map(Selection::Many)
        }
        Some(Value::String(s)) => by_name(members, s, arg).map(Selection::One),
        Some(Value::Array(items)) => {
            let mut picked = Vec::new();
            for item in items {
                let Some(name) = item.as_str() else {
                    return Err(SelectError(format!(
                        "{arg} list entries must be strings, got {item}"
                    )));
                };
                let found = if name.trim() == "*" {
                    (0..members.len()).collect()
                } else {
                    vec![by_name(members, name, arg)?]
                };
                for index in found {
                    if !picked.contains(&index) {
                        picked.push(index);
                    }
                }
            }
            if picked.is_empty() {
                return Err(SelectError(format!(
                    "{arg} list is empty: name at least one instance"
                )));
            }
            picked.sort_unstable();
            Ok(Selection::Many(picked))
        }
        Some(other) => Err(SelectError(format!(
            "{arg} must be a string or a list of strings, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fleet() -> Vec<Instance> {
        let member =
            |server: &str, instance: &str, aliases: &[&str], labels: &[(&str, &str)]| Instance {
                server: server.into(),
                instance: instance.into(),
                aliases: aliases.iter().map(|a| a.to_string()).collect(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
        vec![
            member(
                "cluster-a-mcp-kubernetes",
                "cluster-a",
                &["prod-eu", "production"],
                &[("env", "prod"), ("region", "eu")],
            ),
            member(
                "cluster-b-mcp-kubernetes",
                "cluster-b",
                &["prod-us"],
                &[("env", "prod"), ("region", "us")],
            ),
            member(
                "cluster-c-mcp-kubernetes",
                "cluster-c",
                &["shared"],
                &[("env", "staging"), ("region", "eu")],
            ),
        ]
    }

    #[test]
    fn bare_names_full_names_and_aliases_select_one_instance_case_insensitively() {
        let m = fleet();
        for (value, want) in [
            ("cluster-b", 1),
            ("cluster-a-mcp-kubernetes", 0),
            ("PROD-EU", 0),
            ("production", 0),
            (" cluster-c ", 2),
        ] {
            assert_eq!(
                select(&m, Some(&json!(value)), "cluster"),
                Ok(Selection::One(want)),
                "{value}"
            );
        }
    }

    #[test]
    fn an_unknown_name_lists_valid_values_and_the_closest_match() {
        let err = select(&fleet(), Some(&json!("clustr-b")), "cluster")
            .unwrap_err()
            .0;
        assert!(err.contains("Did you mean \"cluster-b\"?"), "{err}");
        assert!(
            err.contains("\"cluster-a\" (aliases: prod-eu, production)"),
            "{err}"
        );
        let far = select(&fleet(), Some(&json!("zzzzzzzzzzzz")), "cluster")
            .unwrap_err()
            .0;
        assert!(!far.contains("Did you mean"), "{far}");
    }

    #[test]
    fn a_name_two_members_answer_to_is_ambiguous() {
        let mut m = fleet();
        m[2].aliases.push("prod-eu".into());
        let err = select(&m, Some(&json!("prod-eu")), "cluster")
            .unwrap_err()
            .0;
        assert!(
            err.contains("ambiguous") && err.contains("cluster-a and cluster-c"),
            "{err}"
        );
    }

    #[test]
    fn star_lists_and_selectors_fan_out() {
        let m = fleet();
        assert_eq!(
            select(&m, Some(&json!("*")), "c"),
            Ok(Selection::Many(vec![0, 1, 2]))
        );
        assert_eq!(
            select(&m, Some(&json!(["shared", "cluster-a", "prod-eu"])), "c"),
            Ok(Selection::Many(vec![0, 2]))
        );
        assert_eq!(
            select(&m, Some(&json!("env=prod,region!=us")), "c"),
            Ok(Selection::Many(vec![0]))
        );
        assert_eq!(
            select(&m, Some(&json!("env==prod")), "c"),
            Ok(Selection::Many(vec![0, 1]))
        );
        assert_eq!(
            select(&m, Some(&json!("!missing,region")), "c"),
            Ok(Selection::Many(vec![0, 1, 2]))
        );
        let none = select(&m, Some(&json!("env=dev")), "c").unwrap_err().0;
        assert!(none.contains("cluster-a: {env=prod, region=eu}"), "{none}");
        assert!(
            select(&m, None, "c")
                .unwrap_err()
                .0
                .contains("missing required argument")
        );
        assert!(select(&m, Some(&json!(3)), "c").is_err());
        assert!(select(&m, Some(&json!([])), "c").is_err());
    }
}

//! Families: servers sharing `spec.family.name` (the same MCP server on many
//! clusters) are folded so each shared tool appears once, as
//! `x_<family>_<tool>`, with an argument that selects the instance(s).
//!
//! Folding rule for a tool the members disagree on: the members whose
//! inputSchema agree with the largest group (ties: the group holding the
//! member whose server name sorts first) are folded; every other member's
//! copy is exposed under its own server name and reported as a schema
//! divergence. A tool whose schema already has a property named like the
//! instance argument is not folded at all, for the same reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use rmcp::model::{JsonObject, Tool};
use serde_json::{Value, json};

/// Default name of the argument that selects instances.
pub const DEFAULT_INSTANCE_ARG: &str = "instance";

/// One member of a family, as instance selection sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub server: Arc<str>,
    /// `family.instance`, or the server name minus the family suffix.
    pub instance: String,
    pub aliases: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// A folded tool: one exposed tool served by several members.
#[derive(Clone, Debug, PartialEq)]
pub struct FamilyTool {
    pub family: String,
    /// The upstream tool name (the same on every member).
    pub tool: String,
    pub instance_arg: String,
    /// Members that have this tool with the folded schema, sorted by instance.
    pub members: Vec<Instance>,
    /// Destructive (or not marked read-only): never fanned out by default.
    pub destructive: bool,
}

/// Why a member's copy of a tool was not folded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub family: String,
    pub tool: String,
    pub server: String,
    pub reason: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tool {:?} of server {:?} is not folded into family {:?}: {}",
            self.tool, self.server, self.family, self.reason
        )
    }
}

pub use crate::api::default_instance;

/// A family member's tool, as input to folding.
pub struct MemberTool<'a> {
    pub instance: &'a Instance,
    pub tool: &'a Tool,
}

/// The outcome of folding one tool name across a family.
pub struct Folded {
    /// The exposed tool and its route, when anything was folded.
    pub folded: Option<(Tool, FamilyTool)>,
    /// Members whose copy stays under their own server name.
    pub unfolded: Vec<(Arc<str>, Divergence)>,
}

/// Folds the copies of one tool offered by members of `family`.
pub fn fold_tool(
    family: &str,
    instance_arg: &str,
    exposed: String,
    copies: &[MemberTool],
) -> Folded {
    let Some(first) = copies.first() else {
        return Folded {
            folded: None,
            unfolded: vec![],
        };
    };
    let tool_name = first.tool.name.to_string();
    let clashes = |t: &Tool| {
        t.input_schema
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|p| p.contains_key(instance_arg))
    };
    if copies.iter().any(|c| clashes(c.tool)) {
        let reason = format!(
            "its inputSchema already has a property {instance_arg:?} (the family's instanceArg); choose another family.instanceArg"
        );
        return Folded {
            folded: None,
            unfolded: copies
                .iter()
                .map(|c| {
                    (
                        c.instance.server.clone(),
                        divergence(family, &tool_name, c, &reason),
                    )
                })
                .collect(),
        };
    }
    // Group copies by inputSchema; the largest group (first on ties) is folded.
    let mut groups: Vec<Vec<&MemberTool>> = Vec::new();
    for copy in copies {
        match groups
            .iter_mut()
            .find(|g| g[0].tool.input_schema == copy.tool.input_schema)
        {
            Some(group) => group.push(copy),
            None => groups.push(vec![copy]),
        }
    }
    let winner = groups
        .iter()
        .enumerate()
        .max_by(|(ia, a), (ib, b)| a.len().cmp(&b.len()).then(ib.cmp(ia)))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let mut unfolded = vec![];
    for (i, group) in groups.iter().enumerate() {
        if i == winner {
            continue;
        }
        for copy in group {
            let reason = format!(
                "its inputSchema differs from the one {} other member(s) share",
                groups[winner].len()
            );
            unfolded.push((
                copy.instance.server.clone(),
                divergence(family, &tool_name, copy, &reason),
            ));
        }
    }
    let chosen = &groups[winner];
    let mut members: Vec<Instance> = chosen.iter().map(|c| c.instance.clone()).collect();
    members.sort_by(|a, b| a.instance.cmp(&b.instance));
    let canonical = chosen[0].tool;
    let annotations = canonical.annotations.as_ref();
    let destructive = annotations.and_then(|a| a.destructive_hint) == Some(true)
        || annotations.and_then(|a| a.read_only_hint) != Some(true);
    let route = FamilyTool {
        family: family.to_string(),
        tool: tool_name,
        instance_arg: instance_arg.to_string(),
        members,
        destructive,
    };
    let mut shown = canonical.clone();
    shown.name = exposed.into();
    shown.input_schema = Arc::new(with_instance_arg(&canonical.input_schema, &route));
    shown.output_schema = canonical
        .output_schema
        .as_ref()
        .map(|schema| Arc::new(fan_out_output_schema(schema)));
    Folded {
        folded: Some((shown, route)),
        unfolded,
    }
}

fn divergence(family: &str, tool: &str, copy: &MemberTool, reason: &str) -> Divergence {
    Divergence {
        family: family.to_string(),
        tool: tool.to_string(),
        server: copy.instance.server.to_string(),
        reason: reason.to_string(),
    }
}

/// The folded tool `shown` as a caller sees it who may call it only on
/// `members` (a subset of the route's): its instance argument lists them alone.
pub fn restricted(shown: &Tool, route: &FamilyTool, members: Vec<Instance>) -> Tool {
    let mut schema = (*shown.input_schema).clone();
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        properties.remove(&route.instance_arg);
    }
    if let Some(Value::Array(required)) = schema.get_mut("required") {
        required.retain(|r| r.as_str() != Some(route.instance_arg.as_str()));
    }
    let narrowed = FamilyTool {
        members,
        ..route.clone()
    };
    let mut tool = shown.clone();
    tool.input_schema = Arc::new(with_instance_arg(&schema, &narrowed));
    tool
}

/// The member schema plus the required instance argument.
fn with_instance_arg(schema: &JsonObject, route: &FamilyTool) -> JsonObject {
    let mut schema = schema.clone();
    let names: Vec<&str> = route.members.iter().map(|m| m.instance.as_str()).collect();
    let example = names.first().copied().unwrap_or("");
    let mut description = format!(
        "Which {family} instance to run on: one of {list}. Also accepted: a server name or alias, \"*\" for every instance, a list such as [\"{example}\"], or a label selector such as \"env=prod\". Example: \"{example}\".",
        family = route.family,
        list = names.join(", "),
    );
    if route.destructive {
        description.push_str(" This tool may change state, so it runs on one instance at a time.");
    }
    let property = json!({
        "description": description,
        "anyOf": [
            {"type": "string", "enum": names},
            {"type": "string", "description": "an alias, a server name, \"*\", or a label selector"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1}
        ]
    });
    let properties = schema
        .entry("properties")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(properties) = properties {
        properties.insert(route.instance_arg.clone(), property);
    }
    let required = schema
        .entry("required")
        .or_insert_with(|| Value::Array(vec![]));
    if let Value::Array(required) = required {
        required.insert(0, Value::String(route.instance_arg.clone()));
    }
    schema.entry("type").or_insert_with(|| json!("object"));
    schema
}

/// What a folded tool really returns: the member's own structured result
/// for one instance, or `{"instances": {name: {"result"|"error", ...}}}`
/// when several were selected. `$defs` are hoisted so `$ref`s still resolve.
pub fn fan_out_output_schema(member: &JsonObject) -> JsonObject {
    let mut single = member.clone();
    single.remove("$schema");
    let defs = single.remove("$defs");
    let definitions = single.remove("definitions");
    let single = Value::Object(single);
    let mut schema = json!({
        "type": "object",
        "anyOf": [
            single,
            {
                "type": "object",
                "required": ["instances"],
                "properties": {
                    "instances": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {
                                "server": {"type": "string"},
                                "result": {"anyOf": [single, {"type": "string"}]},
                                "error": {"type": "string"},
                                "truncated": {"type": "boolean"}
                            }
                        }
                    },
                    "excluded": {
                        "type": "object",
                        "description": "Selected instances a tool policy left out, and why.",
                        "additionalProperties": {"type": "string"}
                    }
                }
            }
        ]
    });
    if let Value::Object(root) = &mut schema {
        if let Some(defs) = defs {
            root.insert("$defs".into(), defs);
        }
        if let Some(definitions) = definitions {
            root.insert("definitions".into(), definitions);
        }
    }
    match schema {
        Value::Object(object) => object,
        _ => JsonObject::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_instance_strips_the_family_suffix() {
        assert_eq!(
            default_instance("cluster-a-mcp-kubernetes", "kubernetes"),
            "cluster-a"
        );
        assert_eq!(
            default_instance("cluster-a-kubernetes", "kubernetes"),
            "cluster-a"
        );
        assert_eq!(default_instance("cluster-a-mcp", "kubernetes"), "cluster-a");
        assert_eq!(default_instance("kubernetes", "kubernetes"), "kubernetes");
        assert_eq!(default_instance("prom-eu", "kubernetes"), "prom-eu");
    }

    fn instance(name: &str) -> Instance {
        Instance {
            server: format!("{name}-mcp-k8s").into(),
            instance: name.into(),
            aliases: vec![],
            labels: Default::default(),
        }
    }

    fn tool(schema: Value) -> Tool {
        let Value::Object(schema) = schema else {
            panic!()
        };
        let mut t = Tool::new("list_pods", "List pods", Arc::new(schema));
        t.annotations = Some(rmcp::model::ToolAnnotations::new().read_only(true));
        t
    }

    #[test]
    fn the_majority_schema_is_folded_and_the_odd_member_reported() {
        let (a, b, c) = (instance("a"), instance("b"), instance("c"));
        let common = tool(json!({"type": "object", "properties": {"ns": {"type": "string"}}}));
        let odd = tool(json!({"type": "object", "properties": {"namespace": {"type": "string"}}}));
        let copies = [
            MemberTool {
                instance: &a,
                tool: &odd,
            },
            MemberTool {
                instance: &b,
                tool: &common,
            },
            MemberTool {
                instance: &c,
                tool: &common,
            },
        ];
        let folded = fold_tool("k8s", "cluster", "x_k8s_list_pods".into(), &copies);
        let (shown, route) = folded.folded.unwrap();
        let names: Vec<_> = route.members.iter().map(|m| m.instance.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert!(!route.destructive);
        let arg = &shown.input_schema["properties"]["cluster"];
        assert_eq!(arg["anyOf"][0]["enum"], json!(["b", "c"]));
        assert_eq!(shown.input_schema["required"][0], "cluster");
        assert_eq!(folded.unfolded.len(), 1);
        assert_eq!(&*folded.unfolded[0].0, "a-mcp-k8s");
    }

    #[test]
    fn a_clashing_instance_argument_prevents_folding() {
        let a = instance("a");
        let clash = tool(json!({"type": "object", "properties": {"cluster": {"type": "string"}}}));
        let folded = fold_tool(
            "k8s",
            "cluster",
            "x".into(),
            &[MemberTool {
                instance: &a,
                tool: &clash,
            }],
        );
        assert!(folded.folded.is_none());
        assert!(
            folded.unfolded[0]
                .1
                .reason
                .contains("already has a property \"cluster\"")
        );
    }

    #[test]
    fn the_output_schema_covers_both_shapes_and_keeps_refs_resolvable() {
        let member = json!({"$schema": "x", "type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}, "$defs": {"P": {"type": "string"}}});
        let Value::Object(member) = member else {
            panic!()
        };
        let schema = Value::Object(fan_out_output_schema(&member));
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["$defs"]["P"]["type"], "string");
        assert!(schema["anyOf"][0].get("$schema").is_none());
        assert_eq!(schema["anyOf"][1]["required"], json!(["instances"]));
    }
}

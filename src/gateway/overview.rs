//! `flotilla_list_fleet`, the gateway's own tool: everything an agent needs
//! to discover the fleet in one call (servers, families, instances, aliases,
//! labels, state, tool counts, last errors).

use std::sync::Arc;

use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::catalog::Catalog;
use crate::fleet::Fleet;

pub const TOOL_NAME: &str = "flotilla_list_fleet";

/// Every tool clients see: the gateway's own, then the catalog's.
pub fn exposed_tools(listed: &[Tool]) -> Vec<Tool> {
    let mut tools = Vec::with_capacity(listed.len() + 1);
    tools.push(tool());
    tools.extend(listed.iter().cloned());
    tools
}

pub fn tool() -> Tool {
    let schema = json!({
        "type": "object",
        "properties": {
            "family": {
                "type": "string",
                "description": "Only servers of this family (e.g. \"kubernetes\")."
            }
        }
    });
    let Value::Object(schema) = schema else {
        unreachable!("a JSON object literal")
    };
    let mut tool = Tool::new(
        TOOL_NAME,
        "List every MCP server behind this gateway: its family, instance name and aliases (the values family tools accept), labels (for label selectors such as env=prod), connection state, tool count and last error.",
        Arc::new(schema),
    );
    tool.annotations = Some(ToolAnnotations::new().read_only(true).open_world(false));
    tool
}

pub fn call(fleet: &Fleet, catalog: &Catalog, arguments: Option<&JsonObject>) -> CallToolResult {
    let wanted = arguments
        .and_then(|a| a.get("family"))
        .and_then(Value::as_str);
    let mut servers = Vec::new();
    let mut lines =
        vec!["server\tfamily\tinstance\taliases\tlabels\tstate\ttools\tlast error".to_string()];
    for upstream in fleet.upstreams() {
        let desired = upstream.desired();
        let family = desired.spec.family.as_ref();
        if wanted.is_some_and(|w| family.map(|f| f.name.as_str()) != Some(w)) {
            continue;
        }
        let health = upstream.health();
        let instance = family.map(|f| f.instance_name(&upstream.name));
        let aliases = family.map(|f| f.aliases.clone()).unwrap_or_default();
        let tools = catalog
            .tool_counts
            .get(&*upstream.name)
            .copied()
            .unwrap_or(0);
        let labels: Vec<String> = desired
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        lines.push(format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            upstream.name,
            family.map(|f| f.name.as_str()).unwrap_or("-"),
            instance.as_deref().unwrap_or("-"),
            aliases.join(","),
            labels.join(","),
            health.state.as_str(),
            tools,
            health.last_error.as_deref().unwrap_or(""),
        ));
        servers.push(json!({
            "name": upstream.name.as_ref(),
            "description": desired.spec.description,
            "family": family.map(|f| f.name.clone()),
            "instance": instance,
            "aliases": aliases,
            "labels": desired.labels,
            "state": health.state.as_str(),
            "toolCount": tools,
            "lastError": health.last_error,
        }));
    }
    let families: serde_json::Map<String, Value> = catalog
        .families
        .iter()
        .filter(|(name, _)| wanted.is_none_or(|w| w == name.as_str()))
        .map(|(name, summary)| {
            let instances: Vec<&str> = summary
                .members
                .iter()
                .map(|m| m.instance.as_str())
                .collect();
            (
                name.clone(),
                json!({"instanceArg": summary.instance_arg, "instances": instances}),
            )
        })
        .collect();
    for (name, family) in &families {
        lines.push(format!(
            "family {name}: pass {} = one of {}, \"*\", a list, or a label selector",
            family["instanceArg"], family["instances"]
        ));
    }
    let mut result = CallToolResult::success(vec![ContentBlock::text(lines.join("\n"))]);
    result.structured_content = Some(json!({"servers": servers, "families": families}));
    result
}

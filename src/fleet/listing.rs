//! Tool lists read as the upstream wrote them. rmcp's `Tool` holds the
//! members of the revision it models; a server's listing may hold more
//! (`execution` of 2025-11-25 tasks, members of later revisions, extension
//! fields) or write a member differently than rmcp would. Where an upstream
//! has a wire, `tools/list` is sent on it raw and each tool is kept twice:
//! as rmcp's `Tool`, which naming and folding read, and as the members that
//! `Tool` drops or changes ([`ToolExtras`]), which the gateway's own
//! listing puts back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::Tool;
use serde_json::{Map, Value, json};

use super::wire::{Wire, WireError};

/// Members of a tool's listing that rmcp's model drops or writes
/// differently, by the upstream's tool name.
pub type ToolExtras = HashMap<String, Arc<Map<String, Value>>>;

/// Pages followed at most (a server whose cursor never ends is cut off).
const MAX_PAGES: usize = 1000;

/// Every tool the upstream lists, page by page, on its wire.
pub async fn list_tools(
    wire: &Wire,
    timeout: Duration,
) -> Result<(Vec<Tool>, ToolExtras), WireError> {
    let mut tools = Vec::new();
    let mut extras = ToolExtras::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(cursor) => json!({ "cursor": cursor }),
            None => json!({}),
        };
        let Value::Object(mut result) = wire.ask("tools/list", params, timeout).await? else {
            return Err(WireError::Failed(
                "tools/list: the answer is not an object".into(),
            ));
        };
        let Some(Value::Array(page)) = result.remove("tools") else {
            return Err(WireError::Failed(
                "tools/list: the answer has no tools".into(),
            ));
        };
        for raw in page {
            let Value::Object(raw) = raw else { continue };
            // A tool rmcp cannot read is left out, as rmcp's own listing would fail it.
            let Ok(tool) = serde_json::from_value::<Tool>(Value::Object(raw.clone())) else {
                continue;
            };
            let differs = extras_of(&raw, &tool);
            if !differs.is_empty() {
                extras.insert(tool.name.to_string(), Arc::new(differs));
            }
            tools.push(tool);
        }
        cursor = result.remove("nextCursor").filter(|c| !c.is_null());
        if cursor.is_none() {
            return Ok((tools, extras));
        }
    }
    Err(WireError::Failed(format!(
        "tools/list did not end after {MAX_PAGES} pages"
    )))
}

/// The members of `raw` that `tool`, written by rmcp, would lose or change.
pub fn extras_of(raw: &Map<String, Value>, tool: &Tool) -> Map<String, Value> {
    let written = serde_json::to_value(tool).unwrap_or(Value::Null);
    raw.iter()
        .filter(|(key, value)| written.get(key.as_str()) != Some(value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_members_rmcp_drops_or_rewrites_are_extras() {
        let raw = json!({
            "name": "research",
            "description": "d",
            "inputSchema": {"type": "object"},
            "execution": {"taskSupport": "required"},
            "annotations": {"readOnlyHint": true, "futureHint": 1},
            "x-vendor": [1, 2],
        });
        let Value::Object(raw) = raw else { panic!() };
        let tool: Tool = serde_json::from_value(Value::Object(raw.clone())).unwrap();
        let extras = extras_of(&raw, &tool);
        let mut keys: Vec<_> = extras.keys().map(String::as_str).collect();
        keys.sort();
        // Kept by rmcp as written: name, description, inputSchema.
        assert_eq!(keys, ["annotations", "execution", "x-vendor"]);
        assert_eq!(extras["annotations"]["futureHint"], 1);
    }
}

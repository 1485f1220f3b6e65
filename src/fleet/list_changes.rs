//! How the gateway hears that a 2026-07-28 upstream's lists changed. That
//! revision has no standing stream; a client opens a `subscriptions/listen`
//! request for the `list_changed` notifications it wants, and the server
//! answers with a stream that stays open (its first event acknowledges the
//! subscription). Over Streamable HTTP the request is written on the
//! session's wire and its stream read here, so rmcp's service is not held
//! awake by it (`parking`); on a message transport it goes through rmcp.

use futures::StreamExt as _;
use futures::stream::BoxStream;
use rmcp::model::{ServerCapabilities, ServerNotification, SubscriptionFilter};
use rmcp::service::Subscription;
use rmcp::{Peer, RoleClient};
use serde_json::{Value, json};
use sse_stream::Sse;

use super::wire::{ListKind, Wire, WireReply};

/// An open list-change subscription.
pub enum ListChanges {
    /// On the wire: the request's SSE stream.
    Wire(BoxStream<'static, Result<Sse, sse_stream::Error>>),
    /// Through rmcp's session (boxed: rmcp's subscription is large, and
    /// rare: a 2026-07-28 server on a message transport).
    Rmcp(Box<Subscription>),
}

/// The notifications to ask for: the lists the server says it announces.
fn filter_for(capabilities: &ServerCapabilities) -> Option<SubscriptionFilter> {
    let mut filter = SubscriptionFilter::new();
    if capabilities.tools.as_ref().and_then(|t| t.list_changed) == Some(true) {
        filter.tools_list_changed = Some(true);
    }
    if capabilities.resources.as_ref().and_then(|r| r.list_changed) == Some(true) {
        filter.resources_list_changed = Some(true);
    }
    if capabilities.prompts.as_ref().and_then(|p| p.list_changed) == Some(true) {
        filter.prompts_list_changed = Some(true);
    }
    (filter != SubscriptionFilter::new()).then_some(filter)
}

/// Opens a subscription for the list changes the server announces, on
/// `wire` when it is Streamable HTTP; `None` when it announces none or
/// refuses (said at debug level: the health check's listing still sees
/// changes).
pub async fn listen(
    server: &str,
    peer: &Peer<RoleClient>,
    wire: Option<&Wire>,
) -> Option<ListChanges> {
    let capabilities = peer.peer_info()?.capabilities.clone();
    let filter = filter_for(&capabilities)?;
    let opened = match wire.filter(|w| w.is_http()) {
        Some(wire) => listen_on_wire(wire, &filter).await,
        None => peer
            .listen(filter)
            .await
            .map(|subscription| ListChanges::Rmcp(Box::new(subscription)))
            .map_err(|e| super::connect::error_chain(&e)),
    };
    match opened {
        Ok(changes) => Some(changes),
        Err(error) => {
            tracing::debug!(server, %error, "no list-change subscription");
            None
        }
    }
}

/// The subscription request on the wire; open once the server acknowledged it.
async fn listen_on_wire(wire: &Wire, filter: &SubscriptionFilter) -> Result<ListChanges, String> {
    let id = "flotilla-listen";
    let params = json!({ "notifications": filter });
    let body = wire.own_request(id, "subscriptions/listen", params);
    let mut events = match wire.post(body).await.map_err(|e| e.to_string())? {
        WireReply::Events(events) => events,
        WireReply::Json(answer) => {
            let answer = String::from_utf8_lossy(&answer);
            return Err(format!("the server answered without a stream: {answer}"));
        }
    };
    // The acknowledgment comes first; an answer to the request instead is a refusal.
    while let Some(event) = events.next().await {
        let Some(message) = message_of(event.map_err(|e| e.to_string())?) else {
            continue;
        };
        match message.get("method").and_then(Value::as_str) {
            Some("notifications/subscriptions/acknowledged") => {
                return Ok(ListChanges::Wire(events));
            }
            Some(_) => continue,
            None => return Err(format!("the server refused: {message}")),
        }
    }
    Err("the stream ended before it was acknowledged".into())
}

fn message_of(event: Sse) -> Option<Value> {
    serde_json::from_str(&event.data?).ok()
}

/// The next list change; pending forever without a subscription, `None`
/// when it ended.
pub async fn next_change(listen: &mut Option<ListChanges>) -> Option<ListKind> {
    match listen.as_mut() {
        None => std::future::pending().await,
        Some(ListChanges::Wire(events)) => loop {
            let Some(message) = message_of(events.next().await?.ok()?) else {
                continue;
            };
            match message.get("method").and_then(Value::as_str) {
                Some(method) => {
                    if let Some(kind) = ListKind::changed_by(method) {
                        return Some(kind);
                    }
                }
                // The server answered the request: the subscription is over.
                None => return None,
            }
        },
        Some(ListChanges::Rmcp(subscription)) => loop {
            match subscription.next().await {
                Ok(Some(ServerNotification::ToolListChangedNotification(_))) => {
                    return Some(ListKind::Tools);
                }
                Ok(Some(ServerNotification::ResourceListChangedNotification(_))) => {
                    return Some(ListKind::Resources);
                }
                Ok(Some(ServerNotification::PromptListChangedNotification(_))) => {
                    return Some(ListKind::Prompts);
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ToolsCapability;

    #[test]
    fn only_the_lists_the_server_announces_are_asked_for() {
        let mut capabilities = ServerCapabilities::default();
        assert!(filter_for(&capabilities).is_none(), "nothing announced");
        let mut tools = ToolsCapability::default();
        tools.list_changed = Some(true);
        capabilities.tools = Some(tools);
        let filter = filter_for(&capabilities).unwrap();
        assert_eq!(
            serde_json::to_value(&filter).unwrap(),
            json!({"toolsListChanged": true})
        );
        assert_eq!(
            ListKind::changed_by("notifications/tools/list_changed"),
            Some(ListKind::Tools)
        );
        assert_eq!(ListKind::changed_by("notifications/message"), None);
    }
}

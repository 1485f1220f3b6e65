//! The other replicas of this gateway, as far as one client's answer needs
//! them. A question an upstream asks mid-call (elicitation, sampling, roots)
//! reaches a 2025 client on the call's own stream, so on the replica that
//! holds the call; the client answers in a new POST, which a round-robin
//! proxy may send to any replica. So the id of every question this replica
//! puts to a client carries this replica's address, sealed (a client cannot
//! point it elsewhere), after an `@`; a replica that gets an answer it did
//! not ask for passes the request, as the client sent it (its bearer token
//! included: the receiver is the same gateway), to the replica that asked.
//! A passed request is marked (`x-flotilla-forwarded`) and never passed on
//! again.
//!
//! This replica's address is `replicaUrl` in the config file, else
//! `http://$POD_IP:<port>` when `POD_IP` is set (the Helm chart sets it),
//! else the address it listens on unless that is a wildcard. Without one,
//! ids carry no address and an answer must reach the replica that asked.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::auth::inbound::seal::{Purpose, SealingKeys};

/// Marks a request one replica passed to another.
pub const FORWARDED: &str = "x-flotilla-forwarded";
/// Between a question's own id and the sealed address of its replica.
const AT: char = '@';
/// How long the replica that asked may take to take the answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// What the replicas of one gateway share, and how they reach each other.
#[derive(Clone)]
pub struct ReplicaSettings {
    /// The sealing keys (the same file on every replica).
    pub keys: Arc<SealingKeys>,
    /// How the other replicas reach this one, e.g. `http://10.0.0.1:8080`.
    pub own_url: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Address {
    #[serde(rename = "u")]
    url: String,
}

/// This replica's sealed address, and the way to the others.
pub struct Replicas {
    keys: Arc<SealingKeys>,
    /// `@` and this replica's sealed address; empty without an address.
    suffix: String,
    own: Option<String>,
    http: reqwest::Client,
    /// Answers passed on (`flotilla_client_requests_passed_total`).
    passed: prometheus_client::metrics::counter::Counter,
}

impl Replicas {
    /// `own`: how the other replicas reach this one (`http://host:port`).
    pub fn new(
        keys: Arc<SealingKeys>,
        own: Option<String>,
        passed: prometheus_client::metrics::counter::Counter,
    ) -> Arc<Self> {
        let own = own.map(|url| url.trim_end_matches('/').to_string());
        let suffix = own.as_ref().map_or_else(String::new, |url| {
            format!(
                "{AT}{}",
                keys.seal(Purpose::Replica, &Address { url: url.clone() }, None)
            )
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            keys,
            suffix,
            own,
            http,
            passed,
        })
    }

    /// Whether this replica marks ids (it has an address).
    pub fn marks(&self) -> bool {
        !self.suffix.is_empty()
    }

    /// `id` marked as this replica's.
    pub fn tag(&self, id: String) -> String {
        if self.suffix.is_empty() {
            id
        } else {
            id + &self.suffix
        }
    }

    /// The replica that put the question `id` to a client, when it is
    /// another one (and `parts` was not passed here by a replica already).
    pub fn owner(&self, id: &str, parts: &Parts) -> Option<String> {
        if parts.headers.contains_key(FORWARDED) {
            return None;
        }
        let (_, sealed) = id.rsplit_once(AT)?;
        let address: Address = self.keys.unseal(Purpose::Replica, sealed).ok()?;
        (Some(&address.url) != self.own.as_ref()).then_some(address.url)
    }

    /// `id` without the mark of the replica that made it, and whether it had one.
    pub fn untag(id: &str) -> (&str, bool) {
        match id.rsplit_once(AT) {
            Some((bare, sealed)) if sealed.starts_with(crate::auth::inbound::seal::PREFIX) => {
                (bare, true)
            }
            _ => (id, false),
        }
    }

    /// Passes the client's request (`parts` and `body`) to the replica at
    /// `url` and hands its answer back as it comes (a stream stays one);
    /// when that replica cannot be reached, a 502 that says so.
    pub async fn forward(&self, url: &str, parts: &Parts, body: Bytes) -> Response {
        self.try_forward(url, parts, body).await.unwrap_or_else(|| {
            (
                StatusCode::BAD_GATEWAY,
                "the gateway replica this belongs to cannot be reached (it has stopped?); the call it was part of has failed",
            )
                .into_response()
        })
    }

    /// [`Self::forward`], `None` when the replica cannot be reached.
    pub async fn try_forward(&self, url: &str, parts: &Parts, body: Bytes) -> Option<Response> {
        // Inside `/mcp`'s router the path is relative to it: the original names the endpoint.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or("/mcp", |original| original.path());
        let mut request = self
            .http
            .request(parts.method.clone(), format!("{url}{path}"))
            .body(body);
        if parts.method != axum::http::Method::GET {
            // A GET is a stream that stays open; an answer is taken at once.
            request = request.timeout(FORWARD_TIMEOUT);
        }
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) {
                request = request.header(name, value);
            }
        }
        request = request.header(FORWARDED, "1");
        self.passed.inc();
        match request.send().await {
            Ok(answer) => {
                let status = answer.status();
                let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
                let body = Body::from_stream(answer.bytes_stream());
                let mut response = (status, body).into_response();
                if let Some(content_type) = content_type {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, content_type);
                }
                Some(response)
            }
            Err(error) => {
                tracing::warn!(replica = %url, error = %error.without_url(), "passing a client's request to the replica it belongs to failed");
                None
            }
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "content-length"
            | "transfer-encoding"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
            | "proxy-connection"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = axum::http::Request::post("/mcp");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_question_id_names_the_replica_that_asked_and_cannot_be_redirected() {
        let keys = Arc::new(SealingKeys::ephemeral());
        let a = Replicas::new(
            keys.clone(),
            Some("http://10.0.0.1:8080/".into()),
            Default::default(),
        );
        let b = Replicas::new(
            keys.clone(),
            Some("http://10.0.0.2:8080".into()),
            Default::default(),
        );
        let id = a.tag("flotilla-ask-7".into());
        assert!(id.starts_with("flotilla-ask-7@"));
        assert_eq!(
            b.owner(&id, &parts(&[])).as_deref(),
            Some("http://10.0.0.1:8080")
        );
        // Its own question, an already passed request, an untagged id: stays here.
        assert_eq!(a.owner(&id, &parts(&[])), None);
        assert_eq!(b.owner(&id, &parts(&[(FORWARDED, "1")])), None);
        assert_eq!(b.owner("flotilla-ask-7", &parts(&[])), None);
        // An address a client wrote itself is not followed.
        let forged = format!("flotilla-ask-7@{}", "fla.x.evil");
        assert_eq!(b.owner(&forged, &parts(&[])), None);
        let other_keys =
            Replicas::new(Arc::new(SealingKeys::ephemeral()), None, Default::default());
        assert_eq!(other_keys.owner(&id, &parts(&[])), None);
        // Without an address, ids are left as they are.
        assert_eq!(other_keys.tag("flotilla-ask-1".into()), "flotilla-ask-1");
    }
}

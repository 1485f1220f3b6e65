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
//! What a client changes in its session after `initialize` is not in its
//! id (`logging/setLevel`, resource subscriptions, `DELETE`) and a
//! `notifications/cancelled` must reach the replica running the call: with
//! `replicaPeers` set, such a request is also sent, as the client sent it,
//! to every other replica ([`Replicas::mirror`]), which applies it to the
//! session there (each holds the session's rmcp state of its own). The
//! peers are the addresses a DNS name resolves to (a headless Service; the
//! port is this replica's) or the lines of a file (re-read when it changes).
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
    /// Where the other replicas are (`replicaPeers`), if anywhere.
    pub peers: Option<PeerSource>,
}

/// Where the other replicas are found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerSource {
    /// Every address this name resolves to, at `port` (a headless Service).
    Dns { name: String, port: u16 },
    /// One base URL per line (`http://10.0.0.7:8080`); `#` comments.
    File(std::path::PathBuf),
}

/// How long a mirrored request may take on each peer.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(3);

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
    peers: Option<PeerSource>,
    /// The peer file's lines, with the time it was last changed.
    peer_file: std::sync::Mutex<Option<(std::time::SystemTime, Vec<String>)>>,
}

impl Replicas {
    /// `own`: how the other replicas reach this one (`http://host:port`).
    pub fn new(
        keys: Arc<SealingKeys>,
        own: Option<String>,
        passed: prometheus_client::metrics::counter::Counter,
        peers: Option<PeerSource>,
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
            peers,
            peer_file: std::sync::Mutex::default(),
        })
    }

    /// The other replicas' base URLs, now.
    pub async fn others(&self) -> Vec<String> {
        let all = match &self.peers {
            None => return Vec::new(),
            Some(PeerSource::Dns { name, port }) => {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(addresses) => addresses.map(|a| format!("http://{a}")).collect(),
                    Err(error) => {
                        tracing::warn!(peers = %name, %error, "resolving replicaPeers failed");
                        Vec::new()
                    }
                }
            }
            Some(PeerSource::File(path)) => self.peer_file_lines(path),
        };
        let mut others: Vec<String> = all
            .into_iter()
            .map(|url| url.trim_end_matches('/').to_string())
            .filter(|url| Some(url) != self.own.as_ref())
            .collect();
        others.sort();
        others.dedup();
        others
    }

    fn peer_file_lines(&self, path: &std::path::Path) -> Vec<String> {
        let changed = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let Ok(mut cached) = self.peer_file.lock() else {
            return Vec::new();
        };
        if let (Some(changed), Some((seen, lines))) = (changed, cached.as_ref())
            && changed == *seen
        {
            return lines.clone();
        }
        let lines: Vec<String> = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect(),
            Err(error) => {
                tracing::warn!(peers = %path.display(), %error, "reading the replicaPeers file failed");
                Vec::new()
            }
        };
        if let Some(changed) = changed {
            *cached = Some((changed, lines.clone()));
        }
        lines
    }

    /// Sends the client's request (`parts`, `body`) to every other replica,
    /// marked as passed (so none sends it on), and waits for them (at most
    /// [`MIRROR_TIMEOUT`] each). Nothing when this request was passed here.
    pub async fn mirror(&self, parts: &Parts, body: Bytes) {
        if parts.headers.contains_key(FORWARDED) {
            return;
        }
        let others = self.others().await;
        let sent = others.iter().map(|url| {
            let body = body.clone();
            async move {
                match tokio::time::timeout(MIRROR_TIMEOUT, self.try_forward(url, parts, body)).await {
                    Ok(Some(answer)) if answer.status().is_success() => {
                        // Read to the end: the peer's work is done when its answer is.
                        let _ = axum::body::to_bytes(answer.into_body(), 1 << 20).await;
                    }
                    Ok(Some(answer)) => {
                        tracing::debug!(replica = %url, status = %answer.status(), "a replica refused a mirrored session change");
                    }
                    Ok(None) | Err(_) => {
                        tracing::debug!(replica = %url, "a replica did not take a mirrored session change");
                    }
                }
            }
        });
        futures::future::join_all(sent).await;
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
            None,
        );
        let b = Replicas::new(
            keys.clone(),
            Some("http://10.0.0.2:8080".into()),
            Default::default(),
            None,
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
        let other_keys = Replicas::new(
            Arc::new(SealingKeys::ephemeral()),
            None,
            Default::default(),
            None,
        );
        assert_eq!(other_keys.owner(&id, &parts(&[])), None);
        // Without an address, ids are left as they are.
        assert_eq!(other_keys.tag("flotilla-ask-1".into()), "flotilla-ask-1");
    }

    #[tokio::test]
    async fn the_peers_are_the_others_from_a_file_as_it_changes_or_from_dns() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peers");
        std::fs::write(
            &file,
            "# replicas\nhttp://127.0.0.1:8001/\nhttp://127.0.0.1:8002\n\n",
        )
        .unwrap();
        let keys = Arc::new(SealingKeys::ephemeral());
        let me = Replicas::new(
            keys.clone(),
            Some("http://127.0.0.1:8001".into()),
            Default::default(),
            Some(PeerSource::File(file.clone())),
        );
        assert_eq!(me.others().await, ["http://127.0.0.1:8002"]);
        // A changed file is read again (its time moves on).
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, "http://127.0.0.1:8001\nhttp://127.0.0.1:8003\n").unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(me.others().await, ["http://127.0.0.1:8003"]);
        let dns = Replicas::new(
            keys,
            Some("http://127.0.0.1:8001".into()),
            Default::default(),
            Some(PeerSource::Dns {
                name: "localhost".into(),
                port: 8001,
            }),
        );
        // localhost resolves to this replica's own address (and maybe ::1).
        assert!(
            !dns.others()
                .await
                .contains(&"http://127.0.0.1:8001".to_string())
        );
    }
}

//! The `rancher` generator: the clusters of a Rancher server, from its v3
//! API (`GET <url>/v3/clusters`, following `pagination.next`), with a bearer
//! token from a Secret, polled every `intervalSeconds`, filtered by name
//! patterns. Each poller is a task owned by its [`Poller`] (aborted on drop).
//! The token never appears in logs or messages, is sent only to the
//! configured origin (redirects are not followed, and a `next` page on
//! another origin is refused), and every answer is bounded in size.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use wildmatch::WildMatch;

use super::{Inventory, Member, aliases_from};
use crate::api::{RancherGenerator, SecretValue};
use crate::source::kubernetes::{SecretLookup, secret_key};

/// Default and smallest poll interval.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Largest page read; a thousand clusters are well under it.
const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Pages followed in one poll.
const MAX_PAGES: usize = 20;
/// Connecting, and one whole request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The API token the generator names, from the set's namespace.
pub(super) fn token(
    generator: &RancherGenerator,
    namespace: &str,
    secrets: &dyn SecretLookup,
) -> Result<SecretValue, String> {
    let reference = &generator.token_secret_ref;
    let key = reference.key.as_deref().unwrap_or("token");
    secret_key(secrets, namespace, &reference.name, key)
        .map_err(|e| format!("rancher.tokenSecretRef: {e}"))
}

/// The last poll's result; `None` until the first one ends.
type Latest = Arc<Mutex<Option<Result<Vec<Member>, String>>>>;

/// A running poll of one Rancher server for one generator.
pub(super) struct Poller {
    generator: RancherGenerator,
    token: SecretValue,
    latest: Latest,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Poller {
    /// Starts polling now and every interval; `changed` is called when a
    /// poll's result differs from the one before.
    pub(super) fn start(
        generator: RancherGenerator,
        token: SecretValue,
        changed: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        let latest = Arc::new(Mutex::new(None));
        let task = tokio::spawn(poll(
            generator.clone(),
            token.clone(),
            latest.clone(),
            changed,
        ));
        Self {
            generator,
            token,
            latest,
            task,
        }
    }

    /// True when this poller polls `generator` with `token` (else it is replaced).
    pub(super) fn serves(&self, generator: &RancherGenerator, token: &SecretValue) -> bool {
        self.generator == *generator && self.token == *token
    }

    pub(super) fn latest(&self) -> Inventory {
        match self.latest.lock().ok().and_then(|l| l.clone()) {
            None => Inventory::failed(format!(
                "waiting for the first answer from Rancher at {}",
                self.generator.url
            )),
            Some(Ok(members)) => Inventory::members(members),
            Some(Err(error)) => Inventory::failed(error),
        }
    }
}

async fn poll(
    generator: RancherGenerator,
    token: SecretValue,
    latest: Latest,
    changed: impl Fn() + Send + Sync + 'static,
) {
    let interval = generator
        .interval_seconds
        .map_or(DEFAULT_INTERVAL, Duration::from_secs)
        .max(MIN_INTERVAL);
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build();
    loop {
        let result = match &http {
            Ok(http) => members(http, &generator, &token).await,
            Err(e) => Err(format!("cannot build an HTTP client: {e}")),
        };
        if let Err(error) = &result {
            tracing::warn!(rancher = %generator.url, %error, "listing Rancher clusters failed");
        }
        let differs = match latest.lock() {
            Ok(mut latest) => {
                let differs = latest.as_ref() != Some(&result);
                *latest = Some(result);
                differs
            }
            Err(_) => false,
        };
        if differs {
            changed();
        }
        tokio::time::sleep(interval).await;
    }
}

/// The v3 API's collection, the fields used.
#[derive(Deserialize)]
struct Collection {
    #[serde(default)]
    data: Vec<Cluster>,
    #[serde(default)]
    pagination: Option<Pagination>,
}

#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct Cluster {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    state: Option<String>,
}

/// One poll: every page, filtered by the name patterns, as members with
/// `{{name}}`, `{{labels.*}}`, `{{id}}`, `{{state}}` and `{{url}}` (the
/// cluster's Kubernetes API through Rancher, `<url>/k8s/clusters/<id>`).
pub(super) async fn members(
    http: &reqwest::Client,
    generator: &RancherGenerator,
    token: &SecretValue,
) -> Result<Vec<Member>, String> {
    let base = url::Url::parse(generator.url.trim_end_matches('/'))
        .map_err(|e| format!("rancher.url: is not a valid URL: {e}"))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(format!(
            "rancher.url: scheme {:?} is not http or https",
            base.scheme()
        ));
    }
    let root = generator.url.trim_end_matches('/').to_string();
    let patterns: Vec<WildMatch> = generator.names.iter().map(|p| WildMatch::new(p)).collect();
    let mut next = Some(format!("{root}/v3/clusters"));
    let mut members = Vec::new();
    let mut pages = 0;
    while let Some(page_url) = next.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(format!(
                "more than {MAX_PAGES} pages of clusters; not all were read"
            ));
        }
        let page = url::Url::parse(&page_url)
            .map_err(|_| "Rancher named a next page that is not a URL".to_string())?;
        if page.origin() != base.origin() {
            return Err(
                "Rancher named a next page on another server; the token is not sent there".into(),
            );
        }
        let collection = get_page(http, page, token).await?;
        for cluster in collection.data {
            if cluster.name.is_empty()
                || !(patterns.is_empty() || patterns.iter().any(|p| p.matches(&cluster.name)))
            {
                continue;
            }
            members.push(Member {
                aliases: aliases_from(cluster.annotations.as_ref()),
                labels: cluster.labels.unwrap_or_default(),
                values: [
                    (
                        "url".to_string(),
                        format!("{root}/k8s/clusters/{}", cluster.id),
                    ),
                    ("id".to_string(), cluster.id),
                    ("state".to_string(), cluster.state.unwrap_or_default()),
                ]
                .into(),
                name: cluster.name,
            });
        }
        next = collection
            .pagination
            .and_then(|p| p.next)
            .filter(|n| !n.is_empty());
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(members)
}

async fn get_page(
    http: &reqwest::Client,
    url: url::Url,
    token: &SecretValue,
) -> Result<Collection, String> {
    let mut authorization = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| {
            "the token in rancher.tokenSecretRef is not a valid header value".to_string()
        })?;
    authorization.set_sensitive(true);
    let response = http
        .get(url)
        .header(http::header::AUTHORIZATION, authorization)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("cannot reach Rancher: {}", without_url(&e)))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(format!(
            "Rancher refused the token ({}): check the Secret in rancher.tokenSecretRef",
            status.as_u16()
        ));
    }
    if !status.is_success() {
        return Err(format!(
            "Rancher answered {} to GET /v3/clusters",
            status.as_u16()
        ));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| format!("reading Rancher's answer failed: {}", without_url(&e)))?;
        if body.len() + chunk.len() > MAX_PAGE_BYTES {
            return Err(format!(
                "Rancher's answer is larger than {} MiB",
                MAX_PAGE_BYTES / 1024 / 1024
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("Rancher's answer is not a v3 clusters collection: {e}"))
}

/// What went wrong, with its causes, without the URL (it may carry query
/// parameters): "timed out", or the connection's own error.
fn without_url(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".into();
    }
    let mut text = error.to_string();
    if let Some(start) = text.find(" for url (") {
        text.truncate(start);
    }
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `body` (with `{other}` replaced by another loopback origin) at
    /// `/v3/clusters`, answering 401 to any other token; returns the base URL.
    async fn serve(body: &'static str) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/v3/clusters",
            axum::routing::get(move |headers: http::HeaderMap| async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer t") {
                    return (http::StatusCode::UNAUTHORIZED, String::new());
                }
                (
                    http::StatusCode::OK,
                    body.replace("{other}", "http://127.0.0.2:9"),
                )
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (base, task)
    }

    fn generator(url: &str) -> RancherGenerator {
        RancherGenerator {
            url: url.into(),
            names: vec!["prod-*".into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn names_filter_members_and_the_token_never_goes_to_another_origin() {
        let http = reqwest::Client::new();
        let (base, task) = serve(
            r#"{"data": [{"id": "c-1", "name": "prod-a", "labels": {"env": "prod"}, "state": "active"},
                         {"id": "c-2", "name": "dev-a"}], "pagination": {"limit": 2}}"#,
        )
        .await;
        let token = SecretValue::new("t".into());
        let found = members(&http, &generator(&base), &token).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "prod-a");
        assert_eq!(found[0].values["url"], format!("{base}/k8s/clusters/c-1"));
        let refused = members(&http, &generator(&base), &SecretValue::new("wrong".into()))
            .await
            .unwrap_err();
        assert!(
            refused.starts_with("Rancher refused the token (401)"),
            "{refused}"
        );
        task.abort();

        let (base, task) =
            serve(r#"{"data": [], "pagination": {"next": "{other}/v3/clusters?marker=2"}}"#).await;
        let error = members(&http, &generator(&base), &token).await.unwrap_err();
        assert!(error.contains("another server"), "{error}");
        task.abort();
    }
}

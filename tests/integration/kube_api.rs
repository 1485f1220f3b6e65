//! A small in-process Kubernetes API server for tests.
//!
//! It exists only because no real kube-apiserver can run where these tests
//! run: the Kubernetes controller is exercised with the real `kube::Client`
//! (and `kube::runtime` watchers, reflectors and event recorder) against this
//! server over plain HTTP on 127.0.0.1. It follows the Kubernetes API
//! conventions for the resources Flotilla uses: MCPServer, MCPServerSet and
//! ToolPolicy (with their status subresources), Secrets, Leases, core/v1 and
//! events.k8s.io/v1 Events, and Open Cluster Management's cluster-scoped
//! ManagedClusters (served only once their CRD is installed with
//! [`KubeApiServer::install_crd`]), storing every object as generic JSON in one map.
//!
//! Implemented: one global resourceVersion; uid, creationTimestamp and
//! generation; get; list with label selectors (`=`, `==`, `!=`, `key`,
//! `!key`) and field selectors (`metadata.name`, `metadata.namespace`);
//! watch (history replay after a resourceVersion, live events, selection
//! changes as ADDED/DELETED, BOOKMARKs, timeoutSeconds, ERROR 410 Expired
//! once history is compacted); create; replace with optimistic concurrency;
//! delete; merge, strategic-merge (treated as merge), JSON (add, remove,
//! replace, test) and server-side-apply patches; the status subresource;
//! writes that change nothing keep the resourceVersion and emit no event.
//!
//! Simplifications, on purpose:
//! - managedFields: a manager owns the set of leaf paths it wrote (maps are
//!   recursed into, lists and empty maps are atomic leaves; in metadata only
//!   labels, annotations, finalizers and ownerReferences count), stored as
//!   FieldsV1 (`{"f:spec":{"f:url":{}}}`). Apply conflicts are exact paths
//!   another manager owns with a different value; non-apply writes give the
//!   writer ("Update") every field they changed.
//! - generation bumps when anything outside metadata and status changes (the
//!   CRD rule; for MCPServer and Lease that is `spec`).
//! - lists always read the latest state; `limit`/`continue` are ignored (one
//!   page), `resourceVersion`/`resourceVersionMatch` accepted and ignored.
//! - no finalizers or graceful deletion (DELETE removes at once), no
//!   generateName, no delete preconditions, no admission, validation,
//!   defaulting, protobuf, Table or PartialObjectMetadata output, and no
//!   `sendInitialEvents` (kube's default watcher lists, then watches).
//! - the two Event APIs are stored apart; Secret `stringData` is folded into
//!   base64 `data` as the real API does.
//! - test hooks (`apply_object`, `delete_object`, `get_object`) are not
//!   counted as requests.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

/// Tunables; `Default` suits tests.
#[derive(Clone, Debug)]
pub struct Options {
    /// Interval between BOOKMARK events on watches that allow them (default 1 s).
    pub bookmark_interval: Duration,
    /// Watch events kept per resource for resuming watches (default 1000).
    pub history_limit: usize,
}

impl Default for Options {
    fn default() -> Self {
        let bookmark_interval = Duration::from_secs(1);
        Self {
            bookmark_interval,
            history_limit: 1000,
        }
    }
}

/// Request counts keyed by (verb, resource plural, subresource or "").
pub type RequestCounts = BTreeMap<(String, String, String), usize>;

/// A running server; shuts down (runtime, connections, watches) on drop.
pub struct KubeApiServer {
    base_url: String,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// A served resource: group, version, plural, kind, has a status subresource.
struct Res(&'static str, &'static str, &'static str, &'static str, bool);

const RESOURCES: &[Res] = &[
    Res("flotilla.dev", "v1alpha1", "mcpservers", "MCPServer", true),
    Res(
        "flotilla.dev",
        "v1alpha1",
        "mcpserversets",
        "MCPServerSet",
        true,
    ),
    Res(
        "cluster.open-cluster-management.io",
        "v1",
        "managedclusters",
        "ManagedCluster",
        true,
    ),
    Res(
        "flotilla.dev",
        "v1alpha1",
        "toolpolicies",
        "ToolPolicy",
        true,
    ),
    Res("", "v1", "secrets", "Secret", false),
    Res("", "v1", "events", "Event", false),
    Res("events.k8s.io", "v1", "events", "Event", false),
    Res("coordination.k8s.io", "v1", "leases", "Lease", false),
];

/// Cluster-scoped plurals (every other resource is namespaced).
const CLUSTER_SCOPED: &[&str] = &["managedclusters"];
/// Plurals served only once a CustomResourceDefinition for them is installed.
const NEEDS_CRD: &[&str] = &["managedclusters"];

impl Res {
    fn cluster_scoped(&self) -> bool {
        CLUSTER_SCOPED.contains(&self.2)
    }
    fn api_version(&self) -> String {
        match self.0 {
            "" => self.1.to_string(),
            group => format!("{group}/{}", self.1),
        }
    }
    /// "leases.coordination.k8s.io", as in real error messages.
    fn group_resource(&self) -> String {
        match self.0 {
            "" => self.2.to_string(),
            group => format!("{}.{group}", self.2),
        }
    }
}

struct Shared {
    store: Mutex<Store>,
    bookmark_interval: Duration,
    /// Bumped by [`KubeApiServer::end_watches`]: every open watch ends.
    ends: tokio::sync::watch::Sender<u64>,
}

/// One stored change, replayed and streamed to watchers.
#[derive(Clone)]
struct Change {
    rv: u64,
    res: usize,
    etype: &'static str,
    object: Value,
    old: Option<Value>,
}

#[derive(Default)]
struct History {
    /// Every change with `rv > floor` is still in `events`.
    floor: u64,
    events: VecDeque<Change>,
}

struct Store {
    rv: u64,
    objects: BTreeMap<(usize, String, String), Value>,
    history: Vec<History>,
    history_limit: usize,
    tx: broadcast::Sender<Change>,
    /// Writes are kept from open watches (see [`KubeApiServer::apply_object_unseen`]).
    unseen: bool,
    /// (namespace, plural) pairs the client may not touch: 403, as RBAC answers.
    forbidden: Vec<(String, String)>,
    /// Plurals the server does not serve: 404, as when a CRD is not installed.
    unserved: Vec<String>,
    /// Installed CRDs' schemas (`openAPIV3Schema`), by resource index.
    schemas: HashMap<usize, Value>,
    /// Every request is answered 503 (the API server is down).
    down: bool,
    requests: RequestCounts,
    log: Vec<String>,
    unmatched: Vec<String>,
}

/// What a request addresses; `ns` is "" for all namespaces, `name` "" for a collection.
#[derive(Clone)]
struct Target {
    res: usize,
    ns: String,
    name: String,
    sub: Option<String>,
}

impl Target {
    fn key(&self) -> (usize, String, String) {
        (self.res, self.ns.clone(), self.name.clone())
    }
    fn r(&self) -> &'static Res {
        &RESOURCES[self.res]
    }
}

/// A failed request, answered as a `Status` object.
#[derive(Debug)]
pub struct Fail(u16, &'static str, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        reply(self.0, status_json(self.0, self.1, &self.2))
    }
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn reply(code: u16, body: Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn fail(code: u16, reason: &'static str, message: impl Into<String>) -> Fail {
    Fail(code, reason, message.into())
}

fn bad(message: impl Into<String>) -> Fail {
    fail(400, "BadRequest", message)
}

fn bad_body(e: impl std::fmt::Display) -> Fail {
    bad(format!("the request body could not be decoded: {e}"))
}

fn not_found(t: &Target) -> Fail {
    let msg = format!("{} \"{}\" not found", t.r().group_resource(), t.name);
    fail(404, "NotFound", msg)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl KubeApiServer {
    /// Starts a server with default [`Options`] on 127.0.0.1 and a random port.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Starts a server on its own two-thread tokio runtime.
    pub fn start_with(opts: Options) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let base_url = format!("http://{}", listener.local_addr().expect("local addr"));
        let store = Store {
            // Like etcd's revision, never "0" (which a watch reads as "any").
            rv: 1,
            objects: BTreeMap::new(),
            history: RESOURCES.iter().map(|_| History::default()).collect(),
            history_limit: opts.history_limit,
            tx: broadcast::channel(4096).0,
            unseen: false,
            forbidden: Vec::new(),
            unserved: NEEDS_CRD.iter().map(|p| p.to_string()).collect(),
            schemas: HashMap::new(),
            down: false,
            requests: RequestCounts::new(),
            log: Vec::new(),
            unmatched: Vec::new(),
        };
        let bookmark_interval = opts.bookmark_interval;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            bookmark_interval,
            ends: tokio::sync::watch::channel(0).0,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            base_url,
            shared,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A kube client for this server (default namespace `default`); call it
    /// inside a tokio runtime (the client spawns a buffer task there).
    pub fn client(&self) -> kube::Client {
        // kube and reqwest enable both rustls providers, so none is implied.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = kube::Config::new(self.base_url.parse().expect("base url"));
        kube::Client::try_from(config).expect("kube client")
    }

    /// Like `kubectl apply --server-side --force-conflicts` (field manager
    /// `kubectl`, namespace `default` unless set); returns the stored object.
    pub fn apply_object(&self, obj: Value) -> Value {
        let t = locate(&obj);
        let mut st = self.store();
        let old = st.objects.get(&t.key()).cloned();
        let mut obj = strip_nulls(obj);
        if !t.r().cluster_scoped() {
            obj["metadata"]["namespace"] = json!(t.ns);
        }
        let merged = apply(old.as_ref(), obj, &t, "kubectl", true)
            .unwrap_or_else(|f| panic!("apply_object: {f:?}"));
        st.commit(&t, old.as_ref(), merged, None)
    }

    /// Like [`Self::apply_object`], but no open watch hears of it (events
    /// lost, as across a network partition): only a list, or a watch resumed
    /// from history, shows it.
    pub fn apply_object_unseen(&self, obj: Value) -> Value {
        self.store().unseen = true;
        let stored = self.apply_object(obj);
        self.store().unseen = false;
        stored
    }

    /// Refuses every request for `plural` in `namespace` with 403 Forbidden,
    /// as the API server does for a client without a RoleBinding there.
    pub fn forbid(&self, namespace: &str, plural: &str) {
        self.store()
            .forbidden
            .push((namespace.to_string(), plural.to_string()));
    }

    /// Answers every request for `plural` with 404 (`serve = false`), as
    /// before its CRD is installed; `serve = true` serves it again.
    pub fn set_served(&self, plural: &str, serve: bool) {
        let mut st = self.store();
        st.unserved.retain(|p| p != plural);
        if !serve {
            st.unserved.push(plural.to_string());
        }
    }

    /// Installs a CustomResourceDefinition (`apiextensions.k8s.io/v1`) for
    /// one of the resources this server knows: its group, plural, kind and
    /// scope must match, and from then on the resource is served and objects
    /// given to [`Self::apply_validated`] are checked against the required
    /// fields of its first version's schema.
    pub fn install_crd(&self, crd: &Value) {
        let spec = &crd["spec"];
        let (group, plural, kind) = (
            spec["group"].as_str(),
            spec["names"]["plural"].as_str(),
            spec["names"]["kind"].as_str(),
        );
        let res = RESOURCES
            .iter()
            .position(|r| Some(r.0) == group && Some(r.2) == plural && Some(r.3) == kind)
            .unwrap_or_else(|| panic!("this server does not know {plural:?} in {group:?}"));
        let version = &spec["versions"][0];
        assert_eq!(
            version["name"].as_str(),
            Some(RESOURCES[res].1),
            "CRD version"
        );
        let cluster = spec["scope"] == "Cluster";
        assert_eq!(cluster, RESOURCES[res].cluster_scoped(), "CRD scope");
        let mut st = self.store();
        st.schemas
            .insert(res, version["schema"]["openAPIV3Schema"].clone());
        st.unserved.retain(|p| p != RESOURCES[res].2);
    }

    /// [`Self::apply_object`] after checking the object against its
    /// installed CRD's required fields, as the API server's validation
    /// would; `Err` names the first missing field.
    pub fn apply_validated(&self, obj: Value) -> Result<Value, String> {
        let t = locate(&obj);
        let schema = self.store().schemas.get(&t.res).cloned();
        if let Some(schema) = schema {
            missing_required(&schema, &obj, "")?;
        }
        Ok(self.apply_object(obj))
    }

    /// An outage (`down = true`): open watches end and every request is
    /// answered 503 until `down = false`.
    pub fn set_down(&self, down: bool) {
        self.store().down = down;
        if down {
            self.end_watches();
        }
    }

    /// Ends every open watch, as an API server does at its watch timeout or
    /// on restart; clients resume from their last resourceVersion.
    pub fn end_watches(&self) {
        self.shared.ends.send_modify(|generation| *generation += 1);
    }

    /// Like `kubectl delete` of the object that apiVersion, kind and metadata
    /// in `obj` name; returns the deleted object.
    pub fn delete_object(&self, obj: &Value) -> Option<Value> {
        self.store().delete(&locate(obj)).ok()
    }

    /// The stored object that apiVersion, kind and metadata in `obj` name.
    pub fn get_object(&self, obj: &Value) -> Option<Value> {
        self.store().objects.get(&locate(obj).key()).cloned()
    }

    /// The `status` of the object `obj` names (`null` while it has none, or
    /// while there is no such object).
    pub fn status_of(&self, obj: &Value) -> Value {
        self.get_object(obj)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// The status of the object `obj` names, once `check` holds for it
    /// (panics naming `what` after 20 s).
    pub async fn wait_status(
        &self,
        obj: &Value,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        crate::common::eventually(Duration::from_secs(20), what, || {
            let status = self.status_of(obj);
            let ok = check(&status);
            async move { ok.then_some(status) }
        })
        .await
    }

    /// Drops all watch history, so resuming a watch from an older
    /// resourceVersion gets `410 Expired` (as after etcd compaction).
    pub fn compact(&self) {
        let mut st = self.store();
        let rv = st.rv;
        for h in &mut st.history {
            h.events.clear();
            h.floor = rv;
        }
    }

    /// Counts of API requests per (verb, resource, subresource); verbs are
    /// get, list, watch, create, update, patch and delete.
    pub fn requests(&self) -> RequestCounts {
        self.store().requests.clone()
    }

    /// One entry of [`Self::requests`]; `sub` is `""` for the main resource.
    pub fn request_count(&self, verb: &str, resource: &str, sub: &str) -> usize {
        let key = (verb.to_string(), resource.to_string(), sub.to_string());
        self.store().requests.get(&key).copied().unwrap_or(0)
    }

    /// Every routed request as "METHOD /path?query", in arrival order.
    pub fn request_log(&self) -> Vec<String> {
        self.store().log.clone()
    }

    /// Requests this server could not serve (unknown route or verb, or an
    /// unsupported feature); tests should assert it stays empty.
    pub fn unmatched(&self) -> Vec<String> {
        self.store().unmatched.clone()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store().rv
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap()
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The first field `schema` requires that `value` lacks, as `Err(path)`.
fn missing_required(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    for field in schema["required"].as_array().into_iter().flatten() {
        let field = field.as_str().unwrap_or("");
        if value.get(field).is_none_or(Value::is_null) {
            return Err(format!("{path}{field}: Required value"));
        }
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, sub) in properties {
            if let Some(inner) = value.get(name).filter(|v| v.is_object()) {
                missing_required(sub, inner, &format!("{path}{name}."))?;
            }
        }
    }
    Ok(())
}

/// The object a manifest names; panics on anything this server does not serve.
fn locate(obj: &Value) -> Target {
    let (av, kind) = (obj["apiVersion"].as_str(), obj["kind"].as_str());
    let res = RESOURCES
        .iter()
        .position(|r| Some(r.api_version().as_str()) == av && Some(r.3) == kind)
        .unwrap_or_else(|| panic!("unknown apiVersion/kind {av:?}/{kind:?}"));
    let ns = if RESOURCES[res].cluster_scoped() {
        String::new()
    } else {
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string()
    };
    let name = obj["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
        .to_string();
    Target {
        res,
        ns,
        name,
        sub: None,
    }
}

fn route(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (*ns, rest),
        _ => ("", rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, "", None),
        [p, n] => (*p, *n, None),
        [p, n, s] => (*p, *n, Some(s.to_string())),
        _ => return None,
    };
    let res = RESOURCES
        .iter()
        .position(|r| (r.0, r.1, r.2) == (group, version, plural))?;
    let sub_ok = sub
        .as_deref()
        .is_none_or(|s| s == "status" && RESOURCES[res].4);
    let (ns, name) = (ns.to_string(), name.to_string());
    let scope_ok = if RESOURCES[res].cluster_scoped() {
        ns.is_empty()
    } else {
        !ns.is_empty() || name.is_empty()
    };
    (sub_ok && scope_ok).then_some(Target { res, ns, name, sub })
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or("").as_bytes();
    let q: HashMap<String, String> = url::form_urlencoded::parse(query).into_owned().collect();
    let line = format!("{method} {uri}");
    let Some(t) = route(uri.path()) else {
        let msg = "the server could not find the requested resource";
        return unmatched(&s, line, fail(404, "NotFound", msg));
    };
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let (named, whole) = (!t.name.is_empty(), t.sub.is_none());
    let verb = match method {
        Method::GET if !named && watching => "watch",
        Method::GET if !named => "list",
        Method::GET => "get",
        Method::POST if !named && (!t.ns.is_empty() || t.r().cluster_scoped()) => "create",
        Method::PUT if named => "update",
        Method::PATCH if named => "patch",
        Method::DELETE if named && whole => "delete",
        _ => {
            return unmatched(
                &s,
                line,
                fail(405, "MethodNotAllowed", "not supported here"),
            );
        }
    };
    if verb == "watch" && q.get("sendInitialEvents").is_some_and(|v| v == "true") {
        return unmatched(
            &s,
            line,
            bad("sendInitialEvents is not supported by this test server"),
        );
    }
    let mut st = s.store.lock().unwrap();
    if st.down {
        st.log.push(line);
        return fail(503, "ServiceUnavailable", "the API server is down").into_response();
    }
    let plural = t.r().2;
    if st.unserved.iter().any(|p| p == plural) {
        st.log.push(line);
        let msg = "the server could not find the requested resource";
        return fail(404, "NotFound", msg).into_response();
    }
    if st
        .forbidden
        .iter()
        .any(|(ns, p)| *ns == t.ns && p == plural)
    {
        st.log.push(line);
        let msg = format!(
            "{plural} is forbidden: User \"system:serviceaccount:flotilla-system:flotilla\" cannot {verb} resource \"{plural}\" in API group \"{}\" in the namespace \"{}\"",
            t.r().0,
            t.ns
        );
        return fail(403, "Forbidden", msg).into_response();
    }
    let key = (
        verb.into(),
        t.r().2.into(),
        t.sub.clone().unwrap_or_default(),
    );
    *st.requests.entry(key).or_default() += 1;
    st.log.push(line);
    let hdr = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    // Like the real API: the fieldManager parameter, else the client's user agent.
    let agent = hdr(header::USER_AGENT).split('/').next().unwrap_or("");
    let agent = if agent.is_empty() { "unknown" } else { agent };
    let manager = q
        .get("fieldManager")
        .map_or(agent, String::as_str)
        .to_string();
    let result = match verb {
        "watch" => {
            return Selector::parse(&t, &q)
                .map_or_else(Fail::into_response, |sel| watch(&s, st, sel, &q));
        }
        "list" => Selector::parse(&t, &q).map(|sel| (200, st.list(&sel))),
        "get" => st
            .objects
            .get(&t.key())
            .cloned()
            .map(|v| (200, v))
            .ok_or_else(|| not_found(&t)),
        "create" => st.create(&t, &body, &manager).map(|v| (201, v)),
        "update" => st.update(&t, &body, &manager).map(|v| (200, v)),
        "patch" => st.patch(&t, &q, hdr(header::CONTENT_TYPE), &body, &manager),
        _ => st.delete(&t).map(|v| (200, v)),
    };
    result.map_or_else(Fail::into_response, |(code, v)| reply(code, v))
}

fn unmatched(s: &Shared, line: String, fail: Fail) -> Response {
    eprintln!("kube_api test server: unmatched {line}: {}", fail.2);
    s.store.lock().unwrap().unmatched.push(line);
    fail.into_response()
}

/// Namespace, label and field selection for list and watch.
struct Selector {
    res: usize,
    ns: String,
    /// (key, operator: "=", "!=", "exists" or "!", value)
    labels: Vec<(String, &'static str, String)>,
    /// ("name" or "namespace", equal?, value)
    fields: Vec<(String, bool, String)>,
}

impl Selector {
    fn parse(t: &Target, q: &HashMap<String, String>) -> Result<Self, Fail> {
        let terms = |key: &str| -> Vec<String> {
            let s = q.get(key).map_or("", String::as_str);
            s.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect()
        };
        let split = |term: &str| match term.split_once("!=") {
            Some((k, v)) => Some((k.trim().to_string(), false, v.trim().to_string())),
            None => term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), true, v.trim().to_string())),
        };
        let mut labels = Vec::new();
        for term in terms("labelSelector") {
            labels.push(match (split(&term), term.strip_prefix('!')) {
                (Some((k, eq, v)), _) => (k, if eq { "=" } else { "!=" }, v),
                (None, Some(k)) => (k.to_string(), "!", String::new()),
                _ if term.contains([' ', '(']) => {
                    return Err(bad(format!("unsupported label selector {term:?}")));
                }
                _ => (term, "exists", String::new()),
            });
        }
        let mut fields = Vec::new();
        for term in terms("fieldSelector") {
            let Some((k, eq, v)) = split(&term) else {
                return Err(bad(format!("invalid field selector {term:?}")));
            };
            match k.strip_prefix("metadata.") {
                Some(f @ ("name" | "namespace")) => fields.push((f.to_string(), eq, v)),
                _ => return Err(bad(format!("field label not supported: {k}"))),
            }
        }
        Ok(Self {
            res: t.res,
            ns: t.ns.clone(),
            labels,
            fields,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let ns_ok = self.ns.is_empty() || meta["namespace"] == self.ns.as_str();
        let labels_ok = self.labels.iter().all(|(k, op, v)| {
            let l = meta["labels"].get(k).and_then(Value::as_str);
            match *op {
                "=" => l == Some(v.as_str()),
                "!=" => l != Some(v.as_str()),
                "!" => l.is_none(),
                _ => l.is_some(),
            }
        });
        let fields_ok = self
            .fields
            .iter()
            .all(|(f, eq, v)| (meta[f] == v.as_str()) == *eq);
        ns_ok && labels_ok && fields_ok
    }

    /// The watch event a change is for this selection, if any.
    fn event(&self, c: &Change) -> Option<Value> {
        let before = c.old.as_ref().is_some_and(|o| self.matches(o));
        let after = c.etype != "DELETED" && self.matches(&c.object);
        let etype = match (c.res == self.res, before, after) {
            (true, true, true) => "MODIFIED",
            (true, false, true) => "ADDED",
            (true, true, false) => "DELETED",
            _ => return None,
        };
        Some(json!({"type": etype, "object": c.object}))
    }
}

/// Replays history (or the current state) and then streams live changes.
fn watch(
    s: &Arc<Shared>,
    st: MutexGuard<'_, Store>,
    sel: Selector,
    q: &HashMap<String, String>,
) -> Response {
    let r = &RESOURCES[sel.res];
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800);
    let mut live = st.tx.subscribe();
    let mut ends = s.ends.subscribe();
    let initial: Vec<Value> = match q.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => st
            .objects
            .iter()
            .filter(|((res, ..), o)| *res == sel.res && sel.matches(o))
            .map(|(_, o)| json!({"type": "ADDED", "object": o}))
            .collect(),
        Some(v) => {
            let Ok(from) = v.parse::<u64>() else {
                return bad(format!("invalid resourceVersion {v:?}")).into_response();
            };
            let h = &st.history[sel.res];
            if from < h.floor {
                let msg = format!("too old resource version: {from} ({})", h.floor);
                vec![json!({"type": "ERROR", "object": status_json(410, "Expired", &msg)})]
            } else {
                h.events
                    .iter()
                    .filter(|c| c.rv > from)
                    .filter_map(|c| sel.event(c))
                    .collect()
            }
        }
    };
    drop(st);
    let expired = initial.first().is_some_and(|e| e["type"] == "ERROR");
    let (out, rx) = mpsc::channel::<Bytes>(64);
    let (s, interval) = (s.clone(), s.bookmark_interval);
    tokio::spawn(async move {
        let line = |e: &Value| Bytes::from(format!("{e}\n"));
        let mut batch = initial;
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            for e in batch.drain(..) {
                if out.send(line(&e)).await.is_err() {
                    return;
                }
            }
            if expired {
                return;
            }
            tokio::select! {
                _ = &mut deadline => return,
                _ = ends.changed() => return,
                _ = out.closed() => return,
                // On lag, end the stream: the client resumes from its last resourceVersion.
                c = live.recv() => match c {
                    Ok(c) => batch.extend(sel.event(&c)),
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    // Drain under the lock, so the bookmark covers every change sent before it.
                    let st = s.store.lock().unwrap();
                    loop {
                        match live.try_recv() {
                            Ok(c) => batch.extend(sel.event(&c)),
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                    let object = json!({"kind": r.3, "apiVersion": r.api_version(),
                                        "metadata": {"resourceVersion": st.rv.to_string()}});
                    batch.push(json!({"type": "BOOKMARK", "object": object}));
                }
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let headers = [(header::CONTENT_TYPE, "application/json")];
    (StatusCode::OK, headers, Body::from_stream(body)).into_response()
}

impl Store {
    fn list(&self, sel: &Selector) -> Value {
        let r = &RESOURCES[sel.res];
        let items: Vec<&Value> = self
            .objects
            .iter()
            .filter(|((res, ..), o)| *res == sel.res && sel.matches(o))
            .map(|(_, o)| o)
            .collect();
        json!({"kind": format!("{}List", r.3), "apiVersion": r.api_version(),
               "metadata": {"resourceVersion": self.rv.to_string()}, "items": items})
    }

    fn create(&mut self, t: &Target, body: &[u8], manager: &str) -> Result<Value, Fail> {
        let obj = parse_object(t, serde_json::from_slice(body).map_err(bad_body)?)?;
        let meta = &obj["metadata"];
        if meta["namespace"].as_str().is_some_and(|n| n != t.ns) {
            return Err(bad(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if meta["resourceVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
        {
            return Err(bad(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let Some(name) = meta["name"].as_str().filter(|n| !n.is_empty()) else {
            return Err(fail(
                422,
                "Invalid",
                "metadata.name: Required value: name is required",
            ));
        };
        let t = Target {
            name: name.to_string(),
            ..t.clone()
        };
        if self.objects.contains_key(&t.key()) {
            let msg = format!("{} \"{}\" already exists", t.r().group_resource(), t.name);
            return Err(fail(409, "AlreadyExists", msg));
        }
        Ok(self.commit(&t, None, obj, Some(manager)))
    }

    fn update(&mut self, t: &Target, body: &[u8], manager: &str) -> Result<Value, Fail> {
        let obj = parse_object(t, serde_json::from_slice(body).map_err(bad_body)?)?;
        let old = self
            .objects
            .get(&t.key())
            .cloned()
            .ok_or_else(|| not_found(t))?;
        precondition(t, &old, &obj)?;
        Ok(self.commit(t, Some(&old), obj, Some(manager)))
    }

    fn patch(
        &mut self,
        t: &Target,
        q: &HashMap<String, String>,
        ctype: &str,
        body: &[u8],
        manager: &str,
    ) -> Result<(u16, Value), Fail> {
        let old = self.objects.get(&t.key()).cloned();
        let ctype = ctype.split(';').next().unwrap_or("").trim();
        if ctype == "application/apply-patch+yaml" {
            let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
                return Err(bad("PATCH /apply requires fieldManager"));
            };
            let applied = serde_saphyr::from_slice(body).map_err(bad_body)?;
            let applied = strip_nulls(parse_object(t, applied)?);
            match &old {
                Some(old) => precondition(t, old, &applied)?,
                None if t.sub.is_some() => return Err(not_found(t)),
                None => {}
            }
            let force = q.get("force").is_some_and(|f| f == "true");
            let merged = apply(old.as_ref(), applied, t, manager, force)?;
            let code = if old.is_some() { 200 } else { 201 };
            return Ok((code, self.commit(t, old.as_ref(), merged, None)));
        }
        let old = old.ok_or_else(|| not_found(t))?;
        let patch: Value = serde_json::from_slice(body).map_err(bad_body)?;
        let mut new = old.clone();
        match ctype {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                merge_patch(&mut new, &patch)
            }
            "application/json-patch+json" => json_patch(&mut new, &patch)?,
            _ => {
                let msg = format!("the body of the request was in an unknown format: {ctype}");
                return Err(fail(415, "UnsupportedMediaType", msg));
            }
        };
        let new = parse_object(t, new)?;
        precondition(t, &old, &new)?;
        Ok((200, self.commit(t, Some(&old), new, Some(manager))))
    }

    fn delete(&mut self, t: &Target) -> Result<Value, Fail> {
        let old = self.objects.remove(&t.key()).ok_or_else(|| not_found(t))?;
        Ok(self.record(t, old.clone(), Some(old), "DELETED"))
    }

    /// The write path shared by every verb: subresource rules, system
    /// metadata, generation, managedFields for non-apply writes (`manager`),
    /// and no-op detection.
    fn commit(
        &mut self,
        t: &Target,
        old: Option<&Value>,
        mut obj: Value,
        manager: Option<&str>,
    ) -> Value {
        if t.r().4 {
            if let (Some(_), Some(old)) = (&t.sub, old) {
                let mut merged = old.clone();
                set_or_remove(&mut merged, "status", obj.get("status").cloned());
                merged["metadata"]["managedFields"] = obj["metadata"]["managedFields"].take();
                obj = merged;
            } else {
                set_or_remove(
                    &mut obj,
                    "status",
                    old.and_then(|o| o.get("status")).cloned(),
                );
            }
        }
        if t.r().2 == "secrets" {
            fold_string_data(&mut obj);
        }
        let generation = old.map_or(1, |o| {
            let bump = i64::from(content(o) != content(&obj));
            o["metadata"]["generation"].as_i64().unwrap_or(1) + bump
        });
        let meta = &mut obj["metadata"];
        meta["name"] = json!(t.name);
        if t.r().cluster_scoped() {
            if let Some(meta) = meta.as_object_mut() {
                meta.remove("namespace");
            }
        } else {
            meta["namespace"] = json!(t.ns);
        }
        meta["generation"] = json!(generation);
        match old {
            Some(o) => {
                meta["uid"] = o["metadata"]["uid"].clone();
                meta["creationTimestamp"] = o["metadata"]["creationTimestamp"].clone();
            }
            None => {
                meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.rv + 1));
                meta["creationTimestamp"] = json!(now());
            }
        }
        if let Some(manager) = manager {
            track_update(old, &mut obj, t, manager);
        }
        if let Some(o) = old {
            let mut same = obj.clone();
            same["metadata"]["resourceVersion"] = o["metadata"]["resourceVersion"].clone();
            if same == *o {
                return o.clone();
            }
        }
        let etype = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.record(t, obj, old.cloned(), etype)
    }

    /// Gives a write the next resourceVersion and records it for watchers.
    fn record(
        &mut self,
        t: &Target,
        mut obj: Value,
        old: Option<Value>,
        etype: &'static str,
    ) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if etype != "DELETED" {
            self.objects.insert(t.key(), obj.clone());
        }
        let change = Change {
            rv: self.rv,
            res: t.res,
            etype,
            object: obj.clone(),
            old,
        };
        let h = &mut self.history[t.res];
        h.events.push_back(change.clone());
        while h.events.len() > self.history_limit {
            h.floor = h.events.pop_front().map_or(h.floor, |c| c.rv);
        }
        if !self.unseen {
            let _ = self.tx.send(change);
        }
        obj
    }
}

/// Checks that a body is an object of the target's apiVersion, kind and name.
fn parse_object(t: &Target, obj: Value) -> Result<Value, Fail> {
    if !obj.is_object() || !(obj["metadata"].is_object() || obj["metadata"].is_null()) {
        return Err(bad("the body must be a JSON object with object metadata"));
    }
    let (r, av, kind) = (t.r(), obj["apiVersion"].as_str(), obj["kind"].as_str());
    if av != Some(r.api_version().as_str()) || kind != Some(r.3) {
        let want = format!("{}, Kind={}", r.api_version(), r.3);
        return Err(bad(format!(
            "the apiVersion/kind of the object is not {want}"
        )));
    }
    if let Some(name) = obj["metadata"]["name"].as_str()
        && !t.name.is_empty()
        && name != t.name
    {
        let msg = format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            t.name
        );
        return Err(bad(msg));
    }
    Ok(obj)
}

/// 409 when the body carries a resourceVersion other than the stored one.
fn precondition(t: &Target, old: &Value, new: &Value) -> Result<(), Fail> {
    match new["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && old["metadata"]["resourceVersion"] != rv => {
            let msg = format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                t.r().group_resource(),
                t.name
            );
            Err(fail(409, "Conflict", msg))
        }
        _ => Ok(()),
    }
}

fn set_or_remove(obj: &mut Value, key: &str, value: Option<Value>) {
    if let Some(m) = obj.as_object_mut() {
        match value {
            Some(v) => m.insert(key.to_string(), v),
            None => m.remove(key),
        };
    }
}

/// What generation tracks: everything but metadata and status.
fn content(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => m
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, strip_nulls(v)))
            .collect(),
        v => v,
    }
}

/// Secrets: write-only `stringData` is folded into base64 `data`.
fn fold_string_data(obj: &mut Value) {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    for (k, v) in string_data {
        let mut enc = String::new();
        for c in v.as_str().unwrap_or("").as_bytes().chunks(3) {
            let b = |i: usize| u32::from(c.get(i).copied().unwrap_or(0));
            let n = (b(0) << 16) | (b(1) << 8) | b(2);
            for i in 0..4 {
                let sextet = B64[(n >> (18 - 6 * i)) as usize & 63] as char;
                enc.push(if i <= c.len() { sextet } else { '=' });
            }
        }
        obj["data"][k.as_str()] = json!(enc);
    }
}

/// RFC 7386 merge patch; also the deep merge used by apply (nulls stripped first).
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902 JSON patch: add, remove, replace and test. Malformed patches
/// are 400s; patches that do not apply are 422s, as in the real API.
fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), Fail> {
    let ops = ops
        .as_array()
        .ok_or_else(|| bad("a JSON patch must be an array"))?;
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| bad("JSON patch operation without path"))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| bad("JSON patch operation without value"))
        };
        let (parent, key) = path
            .rsplit_once('/')
            .ok_or_else(|| bad(format!("invalid path {path:?}")))?;
        let key = key.replace("~1", "/").replace("~0", "~");
        let cannot = || {
            fail(
                422,
                "Invalid",
                format!("the JSON patch does not apply at {path}"),
            )
        };
        match op["op"].as_str() {
            Some("test") if doc.pointer(path) == Some(&value()?) => {}
            Some("add") => add_at(doc, parent, &key, value()?).ok_or_else(cannot)?,
            Some("remove") => drop(remove_at(doc, parent, &key).ok_or_else(cannot)?),
            Some("replace") => {
                let v = value()?;
                remove_at(doc, parent, &key).ok_or_else(cannot)?;
                add_at(doc, parent, &key, v).ok_or_else(cannot)?;
            }
            Some("test") => return Err(cannot()),
            other => return Err(bad(format!("unsupported JSON patch operation {other:?}"))),
        }
    }
    Ok(())
}

fn add_at(doc: &mut Value, parent: &str, key: &str, v: Value) -> Option<()> {
    match doc.pointer_mut(parent)? {
        Value::Object(m) => drop(m.insert(key.to_string(), v)),
        Value::Array(a) => {
            let i = if key == "-" {
                a.len()
            } else {
                key.parse().ok()?
            };
            (i <= a.len()).then(|| a.insert(i, v))?
        }
        _ => return None,
    }
    Some(())
}

fn remove_at(doc: &mut Value, parent: &str, key: &str) -> Option<Value> {
    match doc.pointer_mut(parent)? {
        Value::Object(m) => m.remove(key),
        Value::Array(a) => key
            .parse()
            .ok()
            .filter(|i| *i < a.len())
            .map(|i| a.remove(i)),
        _ => None,
    }
}

// ---- managed fields: a simplified server-side apply ----

type Path = Vec<String>;

#[derive(Clone)]
struct Entry {
    manager: String,
    /// operation "Apply" (else "Update")
    apply: bool,
    sub: Option<String>,
    time: String,
    fields: BTreeSet<Path>,
}

/// Leaf paths of `v` that a write to the target (resource or subresource) may own.
fn field_paths(v: &Value, t: &Target) -> BTreeSet<Path> {
    fn leaves(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, child) in m.iter().filter(|(_, c)| !c.is_null()) {
                    prefix.push(k.clone());
                    leaves(child, prefix, out);
                    prefix.pop();
                }
            }
            _ => {
                out.insert(prefix.clone());
            }
        }
    }
    let mut all = BTreeSet::new();
    leaves(v, &mut Vec::new(), &mut all);
    let status = t.sub.is_some();
    all.retain(|p| match p.first().map_or("", String::as_str) {
        "status" if t.r().4 => status,
        _ if status => false,
        "" | "apiVersion" | "kind" => false,
        "metadata" => {
            let tracked = ["labels", "annotations", "finalizers", "ownerReferences"];
            p.get(1).is_some_and(|k| tracked.contains(&k.as_str()))
        }
        _ => true,
    });
    all
}

fn get_path<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    p.iter().try_fold(v, |v, k| v.get(k))
}

/// Removes a leaf, then any map it leaves empty (below the top level).
fn remove_path(v: &mut Value, p: &[String]) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    let parent = parents.iter().try_fold(&mut *v, |v, k| v.get_mut(k));
    if let Some(m) = parent.and_then(Value::as_object_mut) {
        m.remove(last);
        if m.is_empty() && parents.len() > 1 {
            remove_path(v, parents);
        }
    }
}

/// Reads metadata.managedFields back into entries.
fn managed(obj: &Value) -> Vec<Entry> {
    fn paths(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        let children: Vec<_> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("f:"))
            .collect();
        if children.is_empty() && !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        for (k, child) in children {
            prefix.push(k[2..].to_string());
            paths(child, prefix, out);
            prefix.pop();
        }
    }
    let entries = obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten();
    let text = |e: &Value, k: &str| e[k].as_str().unwrap_or("").to_string();
    entries
        .map(|e| {
            let mut fields = BTreeSet::new();
            paths(&e["fieldsV1"], &mut Vec::new(), &mut fields);
            let (manager, time) = (text(e, "manager"), text(e, "time"));
            let (apply, sub) = (
                e["operation"] == "Apply",
                e["subresource"].as_str().map(String::from),
            );
            Entry {
                manager,
                apply,
                sub,
                time,
                fields,
            }
        })
        .collect()
}

/// The entry for (manager, operation, target subresource), created if missing.
fn entry<'a>(entries: &'a mut Vec<Entry>, t: &Target, manager: &str, apply: bool) -> &'a mut Entry {
    let same = |e: &Entry| (e.manager.as_str(), e.apply, &e.sub) == (manager, apply, &t.sub);
    let i = entries.iter().position(same).unwrap_or_else(|| {
        let (manager, sub, time) = (manager.to_string(), t.sub.clone(), String::new());
        entries.push(Entry {
            manager,
            apply,
            sub,
            time,
            fields: BTreeSet::new(),
        });
        entries.len() - 1
    });
    &mut entries[i]
}

/// Writes metadata.managedFields; an entry's time changes only with its fields.
fn set_managed(obj: &mut Value, t: &Target, before: &[Entry], entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let key = |e: &Entry| (e.manager.clone(), e.apply, e.sub.clone());
            let prev = before.iter().find(|b| key(b) == key(e) && b.fields == e.fields);
            let mut tree = json!({});
            for p in &e.fields {
                *p.iter().fold(&mut tree, |node, seg| &mut node[format!("f:{seg}").as_str()]) = json!({});
            }
            let operation = if e.apply { "Apply" } else { "Update" };
            let mut v = json!({"manager": e.manager, "operation": operation, "apiVersion": t.r().api_version(),
                               "time": prev.map_or_else(now, |b| b.time.clone()),
                               "fieldsType": "FieldsV1", "fieldsV1": tree});
            if let Some(sub) = &e.sub {
                v["subresource"] = json!(sub);
            }
            v
        })
        .collect();
    let managed = if list.is_empty() {
        None
    } else {
        Some(json!(list))
    };
    set_or_remove(&mut obj["metadata"], "managedFields", managed);
}

/// Non-apply writes: the writer owns every field it changed; removed fields lose all owners.
fn track_update(old: Option<&Value>, obj: &mut Value, t: &Target, manager: &str) {
    let before_paths = old.map(|o| field_paths(o, t)).unwrap_or_default();
    let after_paths = field_paths(obj, t);
    let changed: BTreeSet<Path> = after_paths
        .iter()
        .filter(|p| old.and_then(|o| get_path(o, p)) != get_path(obj, p))
        .cloned()
        .collect();
    let before = old.map(managed).unwrap_or_default();
    let mut entries = before.clone();
    for e in &mut entries {
        e.fields.retain(|p| {
            !changed.contains(p) && (after_paths.contains(p) || !before_paths.contains(p))
        });
    }
    entry(&mut entries, t, manager, false)
        .fields
        .extend(changed);
    set_managed(obj, t, &before, &entries);
}

/// Server-side apply of `applied` (nulls stripped) by `manager` onto `old`.
fn apply(
    old: Option<&Value>,
    applied: Value,
    t: &Target,
    manager: &str,
    force: bool,
) -> Result<Value, Fail> {
    let mut obj = old.cloned().unwrap_or_else(|| json!({"metadata": {}}));
    let paths = field_paths(&applied, t);
    let before = managed(&obj);
    let mut entries = before.clone();
    let mut conflicts: Vec<(String, Path)> = Vec::new();
    for e in entries.iter().filter(|e| e.manager != manager) {
        for p in paths
            .intersection(&e.fields)
            .filter(|p| get_path(&obj, p) != get_path(&applied, p))
        {
            conflicts.push((e.manager.clone(), p.clone()));
        }
    }
    if !conflicts.is_empty() && !force {
        let list: Vec<String> = conflicts
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\": .{}", p.join(".")))
            .collect();
        let msg = format!(
            "Apply failed with {} conflict(s): {}",
            list.len(),
            list.join("; ")
        );
        return Err(fail(409, "Conflict", msg));
    }
    for e in entries.iter_mut().filter(|e| e.manager != manager) {
        e.fields.retain(|p| !conflicts.iter().any(|(_, c)| c == p));
    }
    let previous = std::mem::take(&mut entry(&mut entries, t, manager, true).fields);
    let others: BTreeSet<&Path> = entries.iter().flat_map(|e| &e.fields).collect();
    merge_patch(&mut obj, &applied);
    // A dropped field goes unless another manager owns it or something under it.
    for p in previous
        .difference(&paths)
        .filter(|p| !others.iter().any(|o| o.starts_with(p)))
    {
        remove_path(&mut obj, p);
    }
    entry(&mut entries, t, manager, true).fields = paths;
    set_managed(&mut obj, t, &before, &entries);
    Ok(obj)
}

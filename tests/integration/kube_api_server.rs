//! Tests of the in-process Kubernetes API test server (tests/integration/kube_api.rs)
//! driven by the real kube client, watcher, reflector and event recorder, so
//! the controller's tests can trust it.

use std::time::{Duration, Instant};

use crate::kube_api::{KubeApiServer, Options};
use flotilla::api::{MCPServer, MCPServerSpec, MCPServerStatus, ServerState};
use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

fn server() -> KubeApiServer {
    KubeApiServer::start_with(Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    })
}

fn mcp(name: &str, url: &str) -> MCPServer {
    MCPServer::new(
        name,
        MCPServerSpec {
            url: Some(url.into()),
            ..Default::default()
        },
    )
}

fn mcp_manifest(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServer",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn secret_manifest(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "stringData": {"token": format!("{name}-token")}})
}

fn lease_manifest(name: &str, holder: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": name}, "spec": {"holderIdentity": holder}})
}

async fn next<T>(stream: &mut (impl Stream<Item = T> + Unpin)) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("no stream item within 5 s")
        .expect("stream ended")
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A request kube's typed API cannot make (JSON patch without the
/// `jsonpatch` feature, deliberately malformed bodies), sent by the real client.
async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    ctype: &str,
    body: &[u8],
) -> Result<Value, kube::Error> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ctype)
        .body(body.to_vec())
        .unwrap();
    client.request::<Value>(req).await
}

fn rv(meta: &ObjectMeta) -> u64 {
    meta.resource_version.as_deref().unwrap().parse().unwrap()
}

#[tokio::test]
async fn created_objects_get_uid_creation_timestamp_generation_and_increasing_resource_versions() {
    let s = server();
    let api: Api<MCPServer> = Api::default_namespaced(s.client());
    let a = api
        .create(&PostParams::default(), &mcp("a", "http://a"))
        .await
        .unwrap();
    let b = api
        .create(&PostParams::default(), &mcp("b", "http://b"))
        .await
        .unwrap();
    assert!(a.metadata.uid.is_some() && a.metadata.uid != b.metadata.uid);
    assert!(a.metadata.creation_timestamp.is_some());
    assert_eq!(a.metadata.generation, Some(1));
    assert_eq!(a.metadata.namespace.as_deref(), Some("default"));
    assert!(rv(&b.metadata) > rv(&a.metadata));

    let got = api.get("a").await.unwrap();
    assert_eq!(got.metadata, a.metadata);
    assert_eq!(got.spec.url.as_deref(), Some("http://a"));
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    assert_eq!(list.metadata.resource_version, b.metadata.resource_version);
    assert!(s.unmatched().is_empty(), "{:?}", s.unmatched());
}

#[tokio::test]
async fn errors_are_status_objects_with_kubernetes_reasons_and_codes() {
    let s = server();
    let client = s.client();
    let api: Api<MCPServer> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &mcp("a", "http://a"))
        .await
        .unwrap();

    let dup = api_error(
        api.create(&PostParams::default(), &mcp("a", "http://a"))
            .await,
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    let missing = api_error(api.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert!(missing.is_failure());
    assert!(api.get_opt("nope").await.unwrap().is_none());

    let path = "/apis/flotilla.dev/v1alpha1/namespaces/default/mcpservers";
    let nameless = json!({"apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServer", "spec": {}});
    let body = serde_json::to_vec(&nameless).unwrap();
    let invalid = api_error(raw(&client, "POST", path, "application/json", &body).await);
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    let wrong_kind = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}});
    let body = serde_json::to_vec(&wrong_kind).unwrap();
    let bad = api_error(raw(&client, "POST", path, "application/json", &body).await);
    assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));

    // The 404 body is a complete Status object.
    let resp = reqwest::get(format!("{}{path}/nope", s.base_url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["apiVersion"], "v1");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["code"], 404);
    assert!(s.unmatched().is_empty(), "{:?}", s.unmatched());
}

#[tokio::test]
async fn status_subresource_writes_change_only_status_and_never_bump_generation() {
    let s = server();
    let api: Api<MCPServer> = Api::default_namespaced(s.client());
    api.create(&PostParams::default(), &mcp("a", "http://a"))
        .await
        .unwrap();

    // The controller's call: server-side apply of status, forced, as "flotilla".
    let mut desired = mcp("a", "http://ignored-on-status");
    desired.status = Some(MCPServerStatus {
        state: ServerState::Connected,
        tool_count: 3,
        ..Default::default()
    });
    let pp = PatchParams::apply("flotilla").force();
    let first = api
        .patch_status("a", &pp, &Patch::Apply(&desired))
        .await
        .unwrap();
    let status = first.status.clone().unwrap();
    assert_eq!(
        (status.state, status.tool_count),
        (ServerState::Connected, 3)
    );
    assert_eq!(first.spec.url.as_deref(), Some("http://a"));
    assert_eq!(first.metadata.generation, Some(1));
    let owner = first
        .metadata
        .managed_fields
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| {
            m.manager.as_deref() == Some("flotilla") && m.subresource.as_deref() == Some("status")
        });
    let fields = serde_json::to_value(&owner.unwrap().fields_v1).unwrap();
    assert_eq!(fields["f:status"]["f:state"], json!({}));

    // Applying the same status again is a no-op: no new resourceVersion.
    let again = api
        .patch_status("a", &pp, &Patch::Apply(&desired))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        first.metadata.resource_version
    );
    assert_eq!(s.request_count("patch", "mcpservers", "status"), 2);

    // Writes to the main resource ignore .status; spec changes bump generation.
    let main = json!({"spec": {"url": "http://b"}, "status": {"toolCount": 99}});
    let patched = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&main))
        .await
        .unwrap();
    assert_eq!(patched.spec.url.as_deref(), Some("http://b"));
    assert_eq!(patched.status.as_ref().unwrap().tool_count, 3);
    assert_eq!(patched.metadata.generation, Some(2));

    // Metadata-only changes keep the generation.
    let labels = json!({"metadata": {"labels": {"team": "x"}}});
    let labelled = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(2));

    // Writes to /status (merge patch and PUT) ignore everything but .status.
    let sub = json!({"spec": {"url": "http://c"}, "status": {"toolCount": 4}});
    let merged = api
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&sub))
        .await
        .unwrap();
    assert_eq!(merged.spec.url.as_deref(), Some("http://b"));
    assert_eq!(merged.status.as_ref().unwrap().tool_count, 4);
    assert_eq!(merged.metadata.generation, Some(2));
    let mut put = merged.clone();
    put.spec.url = Some("http://d".into());
    put.status.as_mut().unwrap().tool_count = 5;
    let replaced = api
        .replace_status("a", &PostParams::default(), &put)
        .await
        .unwrap();
    assert_eq!(replaced.spec.url.as_deref(), Some("http://b"));
    assert_eq!(replaced.status.as_ref().unwrap().tool_count, 5);
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(s.request_count("update", "mcpservers", "status"), 1);
    assert!(s.unmatched().is_empty(), "{:?}", s.unmatched());
}

#[tokio::test]
async fn server_side_apply_removes_fields_the_manager_dropped_and_keeps_other_managers_fields() {
    let s = server();
    let api: Api<MCPServer> = Api::default_namespaced(s.client());
    let alice = PatchParams::apply("alice");
    let bob = PatchParams::apply("bob");
    let mut first = mcp_manifest("x", json!({"url": "http://x", "description": "d"}));
    first["metadata"]["labels"] = json!({"owner": "alice"});
    // Apply on a missing object creates it.
    let created = api.patch("x", &alice, &Patch::Apply(&first)).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.labels().get("owner").map(String::as_str),
        Some("alice")
    );

    let bobs = mcp_manifest("x", json!({"toolPrefix": "p"}));
    api.patch("x", &bob, &Patch::Apply(&bobs)).await.unwrap();

    // Alice drops description and her label: both go; bob's toolPrefix stays.
    let second = mcp_manifest("x", json!({"url": "http://x"}));
    let obj = api
        .patch("x", &alice, &Patch::Apply(&second))
        .await
        .unwrap();
    assert_eq!(obj.spec.url.as_deref(), Some("http://x"));
    assert_eq!(obj.spec.description, None);
    assert_eq!(obj.spec.tool_prefix.as_deref(), Some("p"));
    assert!(obj.labels().is_empty());
    assert_eq!(obj.metadata.generation, Some(3));

    // Bob setting alice's field to another value conflicts unless forced.
    let grab = mcp_manifest("x", json!({"toolPrefix": "p", "url": "http://bob"}));
    let conflict = api_error(api.patch("x", &bob, &Patch::Apply(&grab)).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(conflict.message.contains("alice") && conflict.message.contains(".spec.url"));
    // Agreeing on the value is not a conflict: the field becomes shared.
    let share = mcp_manifest("x", json!({"toolPrefix": "p", "url": "http://x"}));
    api.patch("x", &bob, &Patch::Apply(&share)).await.unwrap();
    let forced = api
        .patch("x", &bob.clone().force(), &Patch::Apply(&grab))
        .await
        .unwrap();
    assert_eq!(forced.spec.url.as_deref(), Some("http://bob"));

    // Alice lost spec.url, so dropping it from her config leaves bob's value.
    let mut third = mcp_manifest("x", json!({}));
    third.as_object_mut().unwrap().remove("spec");
    let obj = api.patch("x", &alice, &Patch::Apply(&third)).await.unwrap();
    assert_eq!(obj.spec.url.as_deref(), Some("http://bob"));
    let managers: Vec<_> = obj
        .managed_fields()
        .iter()
        .map(|m| (m.manager.clone().unwrap(), m.operation.clone().unwrap()))
        .collect();
    assert_eq!(managers, vec![("bob".to_string(), "Apply".to_string())]);
    assert!(s.unmatched().is_empty(), "{:?}", s.unmatched());
}

#[tokio::test]
async fn non_apply_writes_take_ownership_so_later_applies_conflict() {
    let s = server();
    let api: Api<MCPServer> = Api::default_namespaced(s.client());
    let manifest = mcp_manifest("x", json!({"url": "http://x"}));
    api.patch("x", &PatchParams::apply("alice"), &Patch::Apply(&manifest))
        .await
        .unwrap();
    let edit = json!({"spec": {"url": "http://edited"}});
    let pp = PatchParams {
        field_manager: Some("editor".into()),
        ..Default::default()
    };
    let edited = api.patch("x", &pp, &Patch::Merge(&edit)).await.unwrap();
    let entry = edited
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some("editor"));
    assert_eq!(entry.unwrap().operation.as_deref(), Some("Update"));
    let conflict = api_error(
        api.patch("x", &PatchParams::apply("alice"), &Patch::Apply(&manifest))
            .await,
    );
    assert!(conflict.message.contains("editor"), "{}", conflict.message);
}

#[tokio::test]
async fn apply_requires_a_field_manager_and_the_right_kind_and_status_apply_needs_the_object() {
    let s = server();
    let client = s.client();
    let path = "/apis/flotilla.dev/v1alpha1/namespaces/default/mcpservers/x";
    let body = serde_json::to_vec(&mcp_manifest("x", json!({}))).unwrap();
    let apply = "application/apply-patch+yaml";
    let no_manager = api_error(raw(&client, "PATCH", path, apply, &body).await);
    assert_eq!(no_manager.code, 400);
    let no_kind = serde_json::to_vec(&json!({"metadata": {"name": "x"}, "spec": {}})).unwrap();
    let with_manager = format!("{path}?fieldManager=t");
    assert_eq!(
        api_error(raw(&client, "PATCH", &with_manager, apply, &no_kind).await).code,
        400
    );
    let yaml = b"apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nspec:\n  url: http://yaml\n";
    let created = raw(&client, "PATCH", &with_manager, apply, yaml)
        .await
        .unwrap();
    assert_eq!(created["spec"]["url"], "http://yaml");

    let api: Api<MCPServer> = Api::default_namespaced(client);
    let status = json!({"apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServer",
                        "status": {"state": "Failed"}});
    let pp = PatchParams::apply("flotilla").force();
    let missing = api_error(api.patch_status("nope", &pp, &Patch::Apply(&status)).await);
    assert_eq!(missing.code, 404);
}

#[tokio::test]
async fn merge_and_strategic_merge_patches_follow_rfc_7386() {
    let s = server();
    let api: Api<Secret> = Api::default_namespaced(s.client());
    s.apply_object(secret_manifest("default", "s", json!({"a": "1", "b": "2"})));
    let patch = json!({"metadata": {"labels": {"a": null, "c": "3"}}, "type": "Opaque"});
    let merged = api
        .patch("s", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let labels: Vec<_> = merged
        .labels()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(labels, ["b=2", "c=3"]);
    assert_eq!(merged.type_.as_deref(), Some("Opaque"));
    let strategic = json!({"metadata": {"labels": {"d": "4"}}});
    let merged = api
        .patch("s", &PatchParams::default(), &Patch::Strategic(&strategic))
        .await
        .unwrap();
    assert_eq!(merged.labels().len(), 3);
    assert_eq!(merged.data.unwrap()["token"].0, b"s-token");
    let missing = api_error(
        api.patch("nope", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!(missing.code, 404);
}

#[tokio::test]
async fn json_patch_supports_add_replace_remove_and_test() {
    let s = server();
    let client = s.client();
    s.apply_object(secret_manifest("default", "s", json!({"a": "1", "b": "2"})));
    let path = "/api/v1/namespaces/default/secrets/s";
    let ct = "application/json-patch+json";
    let ops = json!([
        {"op": "test", "path": "/metadata/labels/a", "value": "1"},
        {"op": "add", "path": "/metadata/labels/c", "value": "3"},
        {"op": "replace", "path": "/metadata/labels/a", "value": "one"},
        {"op": "remove", "path": "/metadata/labels/b"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "x/z"},
    ]);
    let out = raw(
        &client,
        "PATCH",
        path,
        ct,
        &serde_json::to_vec(&ops).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(out["metadata"]["labels"], json!({"a": "one", "c": "3"}));
    assert_eq!(out["metadata"]["finalizers"], json!(["x/y", "x/z"]));

    let failing = json!([{"op": "test", "path": "/metadata/labels/a", "value": "1"}]);
    let body = serde_json::to_vec(&failing).unwrap();
    assert_eq!(
        api_error(raw(&client, "PATCH", path, ct, &body).await).code,
        422
    );
    let malformed = serde_json::to_vec(&json!({"op": "add"})).unwrap();
    assert_eq!(
        api_error(raw(&client, "PATCH", path, ct, &malformed).await).code,
        400
    );
    let unknown = api_error(raw(&client, "PATCH", path, "text/plain", b"{}").await);
    assert_eq!(unknown.code, 415);
}

#[tokio::test]
async fn replacing_a_lease_with_a_stale_resource_version_conflicts() {
    let s = server();
    let leases: Api<Lease> = Api::default_namespaced(s.client());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("flotilla-leader".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let seen_by_b = leases.get("flotilla-leader").await.unwrap();
    let mut seen_by_c = seen_by_b.clone();

    let mut b = seen_by_b;
    b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let won = leases
        .replace("flotilla-leader", &PostParams::default(), &b)
        .await
        .unwrap();
    assert_eq!(won.spec.unwrap().holder_identity.as_deref(), Some("b"));

    seen_by_c.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let lost = api_error(
        leases
            .replace("flotilla-leader", &PostParams::default(), &seen_by_c)
            .await,
    );
    assert_eq!((lost.code, lost.reason.as_str()), (409, "Conflict"));
    // A merge patch carrying the stale resourceVersion is refused the same way.
    let stale = json!({"metadata": {"resourceVersion": seen_by_c.metadata.resource_version},
                       "spec": {"holderIdentity": "c"}});
    let lost = api_error(
        leases
            .patch(
                "flotilla-leader",
                &PatchParams::default(),
                &Patch::Merge(&stale),
            )
            .await,
    );
    assert_eq!(lost.code, 409);
    // Without a resourceVersion, replace is unconditional.
    seen_by_c.metadata.resource_version = None;
    leases
        .replace("flotilla-leader", &PostParams::default(), &seen_by_c)
        .await
        .unwrap();
    leases
        .delete("flotilla-leader", &DeleteParams::default())
        .await
        .unwrap();
    assert!(leases.get_opt("flotilla-leader").await.unwrap().is_none());
    assert!(s.unmatched().is_empty(), "{:?}", s.unmatched());
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists_in_one_or_all_namespaces() {
    let s = server();
    s.apply_object(secret_manifest(
        "default",
        "a",
        json!({"app": "flotilla", "tier": "1"}),
    ));
    s.apply_object(secret_manifest("default", "b", json!({"app": "other"})));
    s.apply_object(secret_manifest("ops", "c", json!({"app": "flotilla"})));
    let all: Api<Secret> = Api::all(s.client());
    let names = |lp: ListParams| {
        let all = all.clone();
        async move {
            let list = all.list(&lp).await.unwrap();
            list.items
                .iter()
                .map(|i| i.name_any())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    assert_eq!(names(ListParams::default()).await, "a,b,c");
    assert_eq!(
        names(ListParams::default().labels("app=flotilla")).await,
        "a,c"
    );
    assert_eq!(
        names(ListParams::default().labels("app==flotilla,tier")).await,
        "a"
    );
    assert_eq!(
        names(ListParams::default().labels("app!=flotilla")).await,
        "b"
    );
    assert_eq!(names(ListParams::default().labels("!tier")).await, "b,c");
    assert_eq!(
        names(ListParams::default().fields("metadata.name=b")).await,
        "b"
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.namespace!=default")).await,
        "c"
    );
    let bad = api_error(all.list(&ListParams::default().fields("spec.x=1")).await);
    assert_eq!(bad.code, 400);

    let default: Api<Secret> = Api::default_namespaced(s.client());
    let list = default
        .list(&ListParams::default().labels("app=flotilla"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(s.unmatched().is_empty(), "{:?}", s.unmatched());
}

#[tokio::test]
async fn watcher_with_default_config_sees_applies_and_deletes_from_api_and_test_hooks() {
    let s = server();
    let api: Api<MCPServer> = Api::default_namespaced(s.client());
    s.apply_object(mcp_manifest("pre", json!({"url": "http://pre"})));
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::Init));
    match next(&mut w).await.unwrap() {
        watcher::Event::InitApply(o) => assert_eq!(o.name_any(), "pre"),
        other => panic!("expected InitApply, got {other:?}"),
    }
    assert!(matches!(
        next(&mut w).await.unwrap(),
        watcher::Event::InitDone
    ));

    api.create(&PostParams::default(), &mcp("a", "http://a"))
        .await
        .unwrap();
    let patch = json!({"spec": {"url": "http://a2"}});
    api.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    s.apply_object(mcp_manifest("b", json!({"url": "http://b"})));
    s.delete_object(&mcp_manifest("b", json!({})));
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match next(&mut w).await.unwrap() {
            watcher::Event::Apply(o) => {
                seen.push(format!("apply {} {}", o.name_any(), o.spec.url.unwrap()))
            }
            watcher::Event::Delete(o) => seen.push(format!("delete {}", o.name_any())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            "apply a http://a",
            "apply a http://a2",
            "delete a",
            "apply b http://b",
            "delete b"
        ]
    );

    let log = s.request_log();
    let list = log
        .iter()
        .find(|l| l.starts_with("GET") && !l.contains("watch="))
        .unwrap();
    assert!(
        list.contains("limit=500") && !list.contains("resourceVersion="),
        "{list}"
    );
    let watch = log.iter().find(|l| l.contains("watch=true")).unwrap();
    assert!(
        watch.contains("allowWatchBookmarks=true") && watch.contains("resourceVersion="),
        "{watch}"
    );
    assert!(s.unmatched().is_empty(), "{:?}", s.unmatched());
}

#[tokio::test]
async fn watcher_with_any_semantic_works_and_lists_at_resource_version_zero_without_paging() {
    let s = server();
    let api: Api<Secret> = Api::default_namespaced(s.client());
    s.apply_object(secret_manifest("default", "a", json!({})));
    // kube drops resourceVersion=0 from a paged list (page_size defaults to 500).
    let paged = watcher::Config::default().any_semantic();
    let unpaged = watcher::Config {
        page_size: None,
        ..watcher::Config::default().any_semantic()
    };
    for (cfg, query) in [
        (paged, "?&limit=500"),
        (
            unpaged,
            "?&resourceVersion=0&resourceVersionMatch=NotOlderThan",
        ),
    ] {
        let mut w = watcher(api.clone(), cfg).applied_objects().boxed();
        assert_eq!(next(&mut w).await.unwrap().name_any(), "a");
        let list = s.request_log().into_iter().rfind(|l| !l.contains("watch="));
        assert_eq!(
            list.unwrap(),
            format!("GET /api/v1/namespaces/default/secrets{query}")
        );
        s.apply_object(secret_manifest(
            "default",
            "b",
            json!({"query": query.len().to_string()}),
        ));
        assert_eq!(next(&mut w).await.unwrap().name_any(), "b");
    }
    assert!(s.unmatched().is_empty(), "{:?}", s.unmatched());
}

#[tokio::test]
async fn reflector_store_follows_the_cluster_state() {
    let s = server();
    let api: Api<MCPServer> = Api::all(s.client());
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default()));
    let task = tokio::spawn(stream.for_each(|_| async {}));
    s.apply_object(mcp_manifest("a", json!({"url": "http://a"})));
    reader.wait_until_ready().await.unwrap();
    s.apply_object(mcp_manifest("b", json!({"url": "http://b"})));
    eventually("two objects in the store", || reader.state().len() == 2).await;
    s.apply_object(mcp_manifest("b", json!({"url": "http://b2"})));
    eventually("the update in the store", || {
        reader
            .state()
            .iter()
            .any(|o| o.spec.url.as_deref() == Some("http://b2"))
    })
    .await;
    s.delete_object(&mcp_manifest("a", json!({})));
    eventually("the delete in the store", || reader.state().len() == 1).await;
    task.abort();
}

#[tokio::test]
async fn watch_replays_history_after_a_resource_version_and_reports_selection_changes() {
    let s = server();
    let api: Api<Secret> = Api::default_namespaced(s.client());
    let start = s.apply_object(secret_manifest("default", "a", json!({"app": "x"})));
    let from = start["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    s.apply_object(secret_manifest("default", "b", json!({"app": "x"})));
    s.apply_object(secret_manifest("default", "a", json!({"app": "y"})));
    let wp = WatchParams::default().labels("app=x").disable_bookmarks();
    let mut events = api.watch(&wp, &from).await.unwrap().boxed();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(match next(&mut events).await.unwrap() {
            WatchEvent::Added(o) => format!("added {}", o.name_any()),
            WatchEvent::Deleted(o) => format!("deleted {}", o.name_any()),
            other => format!("{other:?}"),
        });
    }
    // a left the selection when its label changed: a DELETED for this watch.
    assert_eq!(seen, ["added b", "deleted a"]);
    s.apply_object(secret_manifest("default", "a", json!({"app": "x"})));
    assert!(
        matches!(next(&mut events).await.unwrap(), WatchEvent::Added(o) if o.name_any() == "a")
    );
}

#[tokio::test]
async fn watch_sends_periodic_bookmarks_when_allowed_and_ends_at_timeout_seconds() {
    let s = server();
    let api: Api<Lease> = Api::default_namespaced(s.client());
    s.apply_object(lease_manifest("l", "a"));
    let started = Instant::now();
    let mut events = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next(&mut events).await.unwrap(),
        WatchEvent::Added(_)
    ));
    match next(&mut events).await.unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(
                b.metadata.resource_version,
                s.resource_version().to_string()
            )
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    while let Some(e) = tokio::time::timeout(Duration::from_secs(3), events.next())
        .await
        .unwrap()
    {
        assert!(matches!(e.unwrap(), WatchEvent::Bookmark(_)));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let wp = WatchParams::default().disable_bookmarks().timeout(1);
    let mut quiet = api
        .watch(&wp, &s.resource_version().to_string())
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(3), quiet.next())
        .await
        .unwrap();
    assert!(first.is_none(), "no bookmarks without allowWatchBookmarks");
}

#[tokio::test]
async fn watching_from_a_compacted_resource_version_gets_410_expired() {
    let s = server();
    let api: Api<Lease> = Api::default_namespaced(s.client());
    let list = api.list(&ListParams::default()).await.unwrap();
    let old = list.metadata.resource_version.unwrap();
    s.apply_object(lease_manifest("l", "a"));
    s.compact();
    let mut events = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match next(&mut events).await.unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    assert!(
        events.next().await.is_none(),
        "the stream ends after the error"
    );
    // Watching from the current resourceVersion still works.
    let now = s.resource_version().to_string();
    let mut events = api
        .watch(&WatchParams::default(), &now)
        .await
        .unwrap()
        .boxed();
    s.apply_object(lease_manifest("m", "a"));
    assert!(
        matches!(next(&mut events).await.unwrap(), WatchEvent::Added(o) if o.name_any() == "m")
    );
}

#[tokio::test]
async fn watcher_relists_after_a_410_expired_watch() {
    let s = server();
    let api: Api<Secret> = Api::default_namespaced(s.client());
    // No bookmarks and a selector nothing matches: the watcher's resourceVersion stays old.
    let cfg = watcher::Config::default()
        .labels("app=watched")
        .timeout(1)
        .disable_bookmarks();
    let mut w = watcher(api, cfg).boxed();
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::Init));
    assert!(matches!(
        next(&mut w).await.unwrap(),
        watcher::Event::InitDone
    ));
    s.apply_object(secret_manifest("default", "unwatched", json!({})));
    s.compact();
    match next(&mut w).await {
        Err(watcher::Error::WatchError(e)) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 watch error, got {other:?}"),
    }
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::Init));
    assert!(matches!(
        next(&mut w).await.unwrap(),
        watcher::Event::InitDone
    ));
    s.apply_object(secret_manifest("default", "w", json!({"app": "watched"})));
    assert!(matches!(next(&mut w).await.unwrap(), watcher::Event::Apply(o) if o.name_any() == "w"));
    assert_eq!(s.request_count("list", "secrets", ""), 2);
}

#[tokio::test]
async fn event_recorder_publishes_to_events_k8s_io_and_counts_repeats_as_a_series() {
    let s = server();
    let client = s.client();
    let api: Api<MCPServer> = Api::default_namespaced(client.clone());
    let obj = api
        .create(&PostParams::default(), &mcp("a", "http://a"))
        .await
        .unwrap();
    let reporter = Reporter {
        controller: "flotilla".into(),
        instance: None,
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let event = Event {
        type_: EventType::Warning,
        reason: "ConnectFailed".into(),
        note: Some("connection refused".into()),
        action: "Connect".into(),
        secondary: None,
    };
    recorder
        .publish(&event, &obj.object_ref(&()))
        .await
        .unwrap();
    recorder
        .publish(&event, &obj.object_ref(&()))
        .await
        .unwrap();

    let events: Api<K8sEvent> = Api::default_namespaced(client.clone());
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.regarding.as_ref().unwrap().name.as_deref(), Some("a"));
    assert_eq!(e.reporting_controller.as_deref(), Some("flotilla"));
    assert_eq!(e.series.as_ref().unwrap().count, 2);
    assert_eq!(s.request_count("create", "events", ""), 1);
    assert_eq!(s.request_count("patch", "events", ""), 1);

    // The core/v1 events API is served too.
    let core: Api<CoreEvent> = Api::default_namespaced(client);
    let ev = CoreEvent {
        metadata: ObjectMeta {
            name: Some("a.1".into()),
            ..Default::default()
        },
        involved_object: obj.object_ref(&()),
        reason: Some("Test".into()),
        ..Default::default()
    };
    core.create(&PostParams::default(), &ev).await.unwrap();
    assert_eq!(
        core.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    assert!(s.unmatched().is_empty(), "{:?}", s.unmatched());
}

#[tokio::test]
async fn secrets_string_data_is_stored_as_base64_data() {
    let s = server();
    s.apply_object(secret_manifest("default", "creds", json!({})));
    let api: Api<Secret> = Api::default_namespaced(s.client());
    let secret = api.get("creds").await.unwrap();
    assert_eq!(secret.data.unwrap()["token"].0, b"creds-token");
    assert!(secret.string_data.is_none());
}

#[tokio::test]
async fn requests_are_counted_per_verb_resource_and_subresource_and_unknown_routes_reported() {
    let s = server();
    let client = s.client();
    let api: Api<MCPServer> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &mcp("a", "http://a"))
        .await
        .unwrap();
    api.get("a").await.unwrap();
    api.get_status("a").await.unwrap();
    api.list(&ListParams::default()).await.unwrap();
    let counts = s.requests();
    let key = |v: &str, sub: &str| (v.to_string(), "mcpservers".to_string(), sub.to_string());
    assert_eq!(counts.get(&key("create", "")), Some(&1));
    assert_eq!(counts.get(&key("get", "")), Some(&1));
    assert_eq!(counts.get(&key("get", "status")), Some(&1));
    assert_eq!(counts.get(&key("list", "")), Some(&1));
    assert!(s.unmatched().is_empty());

    let pods = api_error(
        raw(
            &client,
            "GET",
            "/api/v1/namespaces/default/pods",
            "application/json",
            b"",
        )
        .await,
    );
    assert_eq!((pods.code, pods.reason.as_str()), (404, "NotFound"));
    assert_eq!(s.unmatched(), ["GET /api/v1/namespaces/default/pods"]);
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let s = server();
    let addr = s.base_url().trim_start_matches("http://").to_string();
    drop(s);
    eventually("the port to close", || {
        std::net::TcpStream::connect(&addr).is_err()
    })
    .await;
}

#[tokio::test]
async fn server_side_apply_keeps_a_map_whose_fields_another_manager_owns() {
    let s = server();
    let api: Api<MCPServer> = Api::default_namespaced(s.client());
    let empty_spec = mcp_manifest("x", json!({}));
    api.patch(
        "x",
        &PatchParams::apply("alice"),
        &Patch::Apply(&empty_spec),
    )
    .await
    .unwrap();
    let url = mcp_manifest("x", json!({"url": "http://bob"}));
    api.patch("x", &PatchParams::apply("bob"), &Patch::Apply(&url))
        .await
        .unwrap();
    let mut nothing = mcp_manifest("x", json!({}));
    nothing.as_object_mut().unwrap().remove("spec");
    let obj = api
        .patch("x", &PatchParams::apply("alice"), &Patch::Apply(&nothing))
        .await
        .unwrap();
    assert_eq!(obj.spec.url.as_deref(), Some("http://bob"));
}

#[tokio::test]
async fn watch_history_is_bounded_so_resuming_from_before_it_expires() {
    let s = KubeApiServer::start_with(Options {
        history_limit: 2,
        ..Options::default()
    });
    let api: Api<Lease> = Api::default_namespaced(s.client());
    let first = s.apply_object(lease_manifest("l", "a"));
    let first: u64 = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for holder in ["b", "c", "d"] {
        s.apply_object(lease_manifest("l", holder));
    }
    // Kept: the changes to "c" and "d". Resuming after "a" would miss "b".
    let mut expired = api
        .watch(&WatchParams::default(), &first.to_string())
        .await
        .unwrap()
        .boxed();
    assert!(matches!(next(&mut expired).await.unwrap(), WatchEvent::Error(e) if e.code == 410));
    let after_b = (first + 1).to_string();
    let mut resumed = api
        .watch(&WatchParams::default(), &after_b)
        .await
        .unwrap()
        .boxed();
    for holder in ["c", "d"] {
        match next(&mut resumed).await.unwrap() {
            WatchEvent::Modified(l) => {
                assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some(holder))
            }
            other => panic!("expected Modified, got {other:?}"),
        }
    }
}

//! Fleet discovery end to end: MCPServerSets generating a family of
//! simulated clusters from a watched kubeconfig directory (manifest source),
//! from OCM ManagedClusters on the project's Kubernetes API test server
//! (Kubernetes source, the ManagedCluster CRD installed from
//! `fixtures/ocm-managedcluster-crd.yaml`), and from a Rancher server, for
//! which a small stand-in of the one API call the generator makes (`GET
//! /v3/clusters`, paginated) is used, since Rancher cannot be installed here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use crate::kube_api::KubeApiServer;
use serde_json::{Value, json};

const SIM: &str = env!("CARGO_BIN_EXE_flotilla");

/// The member template every set here uses: a simulated cluster per member,
/// in family `kubernetes`.
fn template() -> Value {
    json!({
        "metadata": {"name": "{{name}}-mcp-kubernetes", "labels": {"fleet": "discovered"}},
        "spec": {
            "type": "stdio",
            "command": SIM,
            "args": ["sim-cluster", "--cluster", "{{name}}"],
            "timeout": 10,
            "family": {"name": "kubernetes", "instanceArg": "management_cluster"}
        }
    })
}

/// Names of the servers `/status` lists, sorted.
fn served(gateway: &Gateway) -> Vec<String> {
    let mut names: Vec<String> = gateway.get_json("/status")["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

async fn wait_served(gateway: &Gateway, want: &[&str], within: Duration) {
    let what = format!("servers {want:?}");
    eventually(within, &what, || {
        let ok = served(gateway) == want;
        async move { ok.then_some(()) }
    })
    .await;
}

/// Waits until exactly `members` are served, then connects a client and
/// waits for the family's folded tool.
async fn family_client(gateway: &Gateway, members: &[&str], within: Duration) -> Client {
    wait_served(gateway, members, within).await;
    let client = connect(&gateway.url()).await;
    wait_tool(&client, "x_kubernetes_cluster_info").await;
    client
}

/// `x_kubernetes_cluster_info` for `selector` (a name, alias or label selector).
async fn cluster_info(client: &Client, selector: &str) -> String {
    text_of(
        &call(
            client,
            "x_kubernetes_cluster_info",
            json!({"management_cluster": selector}),
        )
        .await,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_discovery_example_serves_its_three_kubeconfigs_as_one_family() {
    let logs = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&repo().join("examples/discovery"), logs.path());
    wait_served(
        &gateway,
        &[
            "cluster-a-mcp-kubernetes",
            "cluster-b-mcp-kubernetes",
            "cluster-c-mcp-kubernetes",
        ],
        Duration::from_secs(15),
    )
    .await;
    let client = connect(&gateway.url()).await;
    let tools = wait_tools(&client, "the folded family", |names| {
        names.iter().any(|n| n == "x_kubernetes_cluster_info")
    })
    .await;
    assert!(
        tools.iter().all(|t| !t.contains("cluster-a")),
        "one tool per name, not per cluster: {tools:?}"
    );
    let prod = cluster_info(&client, "env=prod").await;
    assert!(
        prod.contains("cluster: cluster-a") && prod.contains("cluster: cluster-b"),
        "{prod}"
    );
    assert!(!prod.contains("cluster: cluster-c"), "{prod}");
    assert!(
        cluster_info(&client, "dev-eu")
            .await
            .contains("cluster: cluster-c")
    );
    assert!(gateway.get_json("/status")["invalidManifests"] == json!([]));
}

fn kubeconfig_file(cluster: &str, env: &str, alias: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster: {{server: 'https://{cluster}.example.invalid:6443'}}\ncontexts:\n- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: admin\n    extensions:\n    - name: flotilla.dev/member\n      extension: {{labels: {{env: {env}}}, aliases: [{alias}]}}\ncurrent-context: {cluster}\nusers:\n- name: admin\n  user: {{token: kubeconfig-token-never-shown}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubeconfig_directory_set_is_one_family_that_follows_files_added_and_removed() {
    let fleet = Fleet::new();
    let dir = fleet.manifests().to_path_buf();
    // Outside the manifest directory, so only the set's own watch sees it.
    let root = tempfile::tempdir().unwrap();
    let kubeconfigs = root.path().join("kubeconfigs");
    let set = json!({
        "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServerSet",
        "metadata": {"name": "clusters"},
        "spec": {"generators": [{"kubeconfigDir": {"path": kubeconfigs}}], "template": template()}
    });
    write_manifest(&dir, "clusters.yaml", &set.to_string());
    // The directory does not exist yet: the set says so, and sees it appear.
    let gateway = Gateway::start(&dir, fleet.logs());
    let problems = gateway.get_json("/status")["invalidManifests"].to_string();
    assert!(problems.contains("cannot read the directory"), "{problems}");
    let staging = root.path().join(".staging");
    std::fs::create_dir(&staging).unwrap();
    write_manifest(
        &staging,
        "cluster-a.yaml",
        &kubeconfig_file("cluster-a", "prod", "prod-eu"),
    );
    write_manifest(
        &staging,
        "cluster-b.yaml",
        &kubeconfig_file("cluster-b", "dev", "dev-us"),
    );
    std::fs::rename(&staging, &kubeconfigs).unwrap();
    let client = family_client(
        &gateway,
        &["cluster-a-mcp-kubernetes", "cluster-b-mcp-kubernetes"],
        Duration::from_secs(15),
    )
    .await;

    // One family: the inventory's labels select, its aliases name.
    let prod = cluster_info(&client, "env=prod").await;
    assert!(
        prod.contains("cluster: cluster-a") && !prod.contains("cluster-b"),
        "{prod}"
    );
    let alias = cluster_info(&client, "dev-us").await;
    assert!(alias.contains("cluster: cluster-b"), "{alias}");
    let status = gateway.server_status("cluster-a-mcp-kubernetes");
    assert_eq!(status["origin"], "clusters.yaml#0 member cluster-a");

    // A new kubeconfig is a new member; a deleted one leaves.
    write_manifest(
        &kubeconfigs,
        "cluster-c.yaml",
        &kubeconfig_file("cluster-c", "prod", "prod-us"),
    );
    wait_served(
        &gateway,
        &[
            "cluster-a-mcp-kubernetes",
            "cluster-b-mcp-kubernetes",
            "cluster-c-mcp-kubernetes",
        ],
        Duration::from_secs(15),
    )
    .await;
    let prod = eventually(Duration::from_secs(15), "cluster-c in env=prod", || async {
        let text = cluster_info(&client, "env=prod").await;
        text.contains("cluster: cluster-c").then_some(text)
    })
    .await;
    assert!(prod.contains("cluster: cluster-a"), "{prod}");
    std::fs::remove_file(kubeconfigs.join("cluster-a.yaml")).unwrap();
    wait_served(
        &gateway,
        &["cluster-b-mcp-kubernetes", "cluster-c-mcp-kubernetes"],
        Duration::from_secs(15),
    )
    .await;

    // A broken kubeconfig is named on the set, without its contents, and
    // costs no other member.
    write_manifest(
        &kubeconfigs,
        "broken.yaml",
        "users: [{user: {token: kubeconfig-token-never-shown}}\ncontexts: {",
    );
    let problem = eventually(
        Duration::from_secs(15),
        "the broken kubeconfig reported",
        || {
            let problems = gateway.get_json("/status")["invalidManifests"].clone();
            async move {
                problems
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p.to_string().contains("broken.yaml"))
                    .cloned()
            }
        },
    )
    .await;
    let text = problem.to_string();
    assert!(
        text.contains("generators[0]: kubeconfigDir file broken.yaml: is not a kubeconfig"),
        "{text}"
    );
    assert_eq!(
        served(&gateway),
        ["cluster-b-mcp-kubernetes", "cluster-c-mcp-kubernetes"]
    );
    assert!(
        !gateway
            .proc
            .log_text()
            .contains("kubeconfig-token-never-shown")
    );
    assert!(
        !gateway
            .get_json("/status")
            .to_string()
            .contains("kubeconfig-token-never-shown")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_written_server_keeps_its_name_and_an_unknown_placeholder_is_reported_on_the_set() {
    let fleet = Fleet::new();
    let dir = fleet.manifests().to_path_buf();
    let mut broken_template = template();
    broken_template["spec"]["description"] = json!("in {{labels.region}}");
    let sets = format!(
        "{}\n---\n{}\n",
        json!({
            "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServerSet", "metadata": {"name": "listed"},
            "spec": {"generators": [{"list": {"elements": [
                {"name": "alpha", "labels": {"region": "eu"}, "aliases": ["first"]},
                {"name": "beta", "labels": {"region": "us"}}
            ]}}], "template": template()}
        }),
        json!({
            "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServerSet", "metadata": {"name": "unlabelled"},
            "spec": {"generators": [{"list": {"elements": [{"name": "gamma"}]}}], "template": broken_template}
        })
    );
    write_manifest(&dir, "sets.yaml", &sets);
    // Hand-written, with the name the set would give "beta".
    write_manifest(
        &dir,
        "own.yaml",
        &sim_manifest("beta-mcp-kubernetes", "hand-written", ""),
    );
    let gateway = Gateway::start(&dir, fleet.logs());
    wait_served(
        &gateway,
        &["alpha-mcp-kubernetes", "beta-mcp-kubernetes"],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        gateway.server_status("beta-mcp-kubernetes")["origin"],
        "own.yaml#0"
    );
    let problems = gateway.get_json("/status")["invalidManifests"].to_string();
    assert!(
        problems.contains("member \\\"beta\\\": MCPServer name \\\"beta-mcp-kubernetes\\\" is already declared by own.yaml#0"),
        "{problems}"
    );
    assert!(
        problems.contains(
            "member \\\"gamma\\\": template.spec.description: unknown placeholder {{labels.region}}"
        ),
        "{problems}"
    );
}

fn kubeconfig(api: &KubeApiServer, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig.yaml");
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: '{}'}}}}]\nusers: [{{name: test, user: {{}}}}]\ncontexts: [{{name: test, context: {{cluster: test, user: test, namespace: default}}}}]\ncurrent-context: test\n",
        api.base_url()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

fn managed_cluster(name: &str, labels: Value, aliases: &str) -> Value {
    json!({
        "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
        "metadata": {"name": name, "labels": labels, "annotations": {"flotilla.dev/aliases": aliases}},
        "spec": {"hubAcceptsClient": true, "managedClusterClientConfigs": [{"url": format!("https://{name}.example.invalid:6443")}]}
    })
}

/// What names the MCPServerSet `team-a/hub` to the API server.
fn hub() -> Value {
    json!({"apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServerSet", "metadata": {"name": "hub", "namespace": "team-a"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn ocm_managed_clusters_added_relabelled_and_removed_change_the_family() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    api.apply_object(json!({
        "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServerSet",
        "metadata": {"name": "hub", "namespace": "team-a"},
        "spec": {"generators": [{"managedClusters": {"selector": "env=prod"}}], "template": template()}
    }));
    let gateway =
        Gateway::start_kubernetes(&kubeconfig(&api, logs.path()), "gw-1", &[], logs.path());

    // No OCM on this API server yet: the set says so, in words.
    let status = api
        .wait_status(&hub(), "the missing OCM API on the set", |s| {
            s["conditions"][0]["status"] == "False"
        })
        .await;
    assert!(
        status["errors"][0]
            .as_str()
            .unwrap_or("")
            .contains("needs an Open Cluster Management hub"),
        "{status}"
    );

    // The hub gets OCM's ManagedCluster CRD and three clusters.
    let crd_text = std::fs::read_to_string(
        repo().join("tests/integration/fixtures/ocm-managedcluster-crd.yaml"),
    )
    .unwrap();
    let crd: Value = serde_saphyr::from_str(&crd_text).unwrap();
    api.install_crd(&crd);
    let mut unaccepted = managed_cluster("x", json!({}), "");
    unaccepted["spec"] = json!({});
    let refused = api.apply_validated(unaccepted).unwrap_err();
    assert_eq!(
        refused, "spec.hubAcceptsClient: Required value",
        "the CRD's schema applies"
    );
    for cluster in [
        managed_cluster(
            "cluster-a",
            json!({"env": "prod", "region": "eu"}),
            "prod-eu",
        ),
        managed_cluster("cluster-b", json!({"env": "prod", "region": "us"}), ""),
        managed_cluster("cluster-c", json!({"env": "staging"}), "stage"),
    ] {
        api.apply_validated(cluster).unwrap();
    }
    let client = family_client(
        &gateway,
        &["cluster-a-mcp-kubernetes", "cluster-b-mcp-kubernetes"],
        Duration::from_secs(20),
    )
    .await;
    let eu = cluster_info(&client, "region=eu").await;
    assert!(
        eu.contains("cluster: cluster-a") && !eu.contains("cluster-b"),
        "{eu}"
    );
    assert!(
        cluster_info(&client, "prod-eu")
            .await
            .contains("cluster: cluster-a")
    );
    let status = api
        .wait_status(&hub(), "Ready with two members", |s| {
            s["members"] == 2 && s["conditions"][0]["status"] == "True"
        })
        .await;
    assert_eq!(
        status["memberNames"],
        json!(["cluster-a-mcp-kubernetes", "cluster-b-mcp-kubernetes"])
    );

    // Relabelled into the selector: it joins, alias and all.
    api.apply_object(managed_cluster(
        "cluster-c",
        json!({"env": "prod", "region": "ap"}),
        "stage",
    ));
    wait_served(
        &gateway,
        &[
            "cluster-a-mcp-kubernetes",
            "cluster-b-mcp-kubernetes",
            "cluster-c-mcp-kubernetes",
        ],
        Duration::from_secs(20),
    )
    .await;
    let joined = eventually(
        Duration::from_secs(15),
        "cluster-c by its alias",
        || async {
            let text = cluster_info(&client, "stage").await;
            text.contains("cluster: cluster-c").then_some(text)
        },
    )
    .await;
    assert!(joined.contains("cluster: cluster-c"));

    // Removed from the hub: it leaves the family.
    api.delete_object(&managed_cluster("cluster-a", json!({}), ""));
    wait_served(
        &gateway,
        &["cluster-b-mcp-kubernetes", "cluster-c-mcp-kubernetes"],
        Duration::from_secs(20),
    )
    .await;
    api.wait_status(&hub(), "two members again", |s| {
        s["memberNames"] == json!(["cluster-b-mcp-kubernetes", "cluster-c-mcp-kubernetes"])
    })
    .await;
}

/// A stand-in for the one Rancher API call the generator makes:
/// `GET /v3/clusters` with a bearer token, answered as a v3 collection in
/// pages of two (`pagination.next` carries a `marker`), as Rancher does.
/// Written for this test because Rancher cannot be installed here.
struct RancherStandIn {
    url: String,
    clusters: Arc<Mutex<Vec<Value>>>,
    /// Requests seen, and how many carried the right token.
    seen: Arc<Mutex<(usize, usize)>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Drop for RancherStandIn {
    fn drop(&mut self) {
        self._server.abort();
    }
}

const RANCHER_TOKEN: &str = "token-abcde:rancher-secret-never-shown";

async fn rancher_stand_in(clusters: Vec<Value>) -> RancherStandIn {
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    type Shared = (Arc<Mutex<Vec<Value>>>, Arc<Mutex<(usize, usize)>>, String);
    async fn list(
        State((clusters, seen, base)): State<Shared>,
        headers: HeaderMap,
        Query(query): Query<std::collections::HashMap<String, String>>,
    ) -> Result<axum::Json<Value>, StatusCode> {
        let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {RANCHER_TOKEN}"));
        {
            let mut seen = seen.lock().unwrap();
            seen.0 += 1;
            seen.1 += usize::from(authorized);
        }
        if !authorized {
            return Err(StatusCode::UNAUTHORIZED);
        }
        let all = clusters.lock().unwrap().clone();
        let start: usize = query
            .get("marker")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let page: Vec<Value> = all.iter().skip(start).take(2).cloned().collect();
        let mut pagination = json!({"limit": 2, "total": all.len()});
        if start + 2 < all.len() {
            pagination["next"] = json!(format!("{base}/v3/clusters?limit=2&marker={}", start + 2));
        }
        Ok(axum::Json(
            json!({"type": "collection", "resourceType": "cluster", "data": page, "pagination": pagination}),
        ))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let clusters = Arc::new(Mutex::new(clusters));
    let seen = Arc::new(Mutex::new((0, 0)));
    let app = axum::Router::new()
        .route("/v3/clusters", axum::routing::get(list))
        .with_state((clusters.clone(), seen.clone(), url.clone()));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    RancherStandIn {
        url,
        clusters,
        seen,
        _server: server,
    }
}

fn rancher_cluster(id: &str, name: &str, env: &str) -> Value {
    json!({"id": id, "type": "cluster", "name": name, "state": "active",
           "labels": {"env": env}, "annotations": {"flotilla.dev/aliases": format!("{id}-alias")}})
}

#[tokio::test(flavor = "multi_thread")]
async fn rancher_clusters_matching_the_name_pattern_become_members_and_follow_the_inventory() {
    let rancher = rancher_stand_in(vec![
        rancher_cluster("c-m-1", "prod-1", "prod"),
        rancher_cluster("local", "local", "infra"),
        rancher_cluster("c-m-2", "prod-2", "prod"),
        rancher_cluster("c-m-3", "staging-1", "staging"),
    ])
    .await;
    let fleet = Fleet::new();
    let dir = fleet.manifests().to_path_buf();
    let mut template = template();
    template["spec"]["description"] = json!("{{name}} ({{id}}) at {{url}}");
    let manifests = format!(
        "{}\n---\n{}\n",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rancher"},
               "stringData": {"token": RANCHER_TOKEN}}),
        json!({
            "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServerSet", "metadata": {"name": "rancher"},
            "spec": {"generators": [{"rancher": {
                "url": rancher.url, "tokenSecretRef": {"name": "rancher"},
                "names": ["prod-*"], "intervalSeconds": 10
            }}], "template": template}
        })
    );
    write_manifest(&dir, "rancher.yaml", &manifests);
    let gateway = Gateway::start(&dir, fleet.logs());
    // Both pages read; only the clusters matching prod-* are members.
    let client = family_client(
        &gateway,
        &["prod-1-mcp-kubernetes", "prod-2-mcp-kubernetes"],
        Duration::from_secs(15),
    )
    .await;
    assert!(
        cluster_info(&client, "c-m-2-alias")
            .await
            .contains("cluster: prod-2")
    );
    let (requests, authorized) = *rancher.seen.lock().unwrap();
    assert!(
        requests >= 2 && requests == authorized,
        "{requests} requests, {authorized} with the token"
    );

    // The inventory changes: at the next poll the member follows.
    rancher
        .clusters
        .lock()
        .unwrap()
        .retain(|c| c["name"] != "prod-1");
    rancher
        .clusters
        .lock()
        .unwrap()
        .push(rancher_cluster("c-m-9", "prod-9", "prod"));
    wait_served(
        &gateway,
        &["prod-2-mcp-kubernetes", "prod-9-mcp-kubernetes"],
        Duration::from_secs(25),
    )
    .await;

    // The token is in no log line and no status.
    assert!(
        !gateway
            .proc
            .log_text()
            .contains("rancher-secret-never-shown")
    );
    assert!(
        !gateway
            .get_json("/status")
            .to_string()
            .contains("rancher-secret-never-shown")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_that_may_not_list_managed_clusters_says_how_to_grant_it_on_the_set() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    let crd_text = std::fs::read_to_string(
        repo().join("tests/integration/fixtures/ocm-managedcluster-crd.yaml"),
    )
    .unwrap();
    api.install_crd(&serde_saphyr::from_str(&crd_text).unwrap());
    api.apply_validated(managed_cluster("cluster-a", json!({"env": "prod"}), ""))
        .unwrap();
    // RBAC refuses the cluster-scoped list, as without the chart's
    // discovery.managedClusters grant.
    api.forbid("", "managedclusters");
    api.apply_object(json!({
        "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServerSet",
        "metadata": {"name": "hub", "namespace": "team-a"},
        "spec": {"generators": [{"managedClusters": {}}], "template": template()}
    }));
    // Ready all the same: the set's members are missing, nothing else.
    let gateway =
        Gateway::start_kubernetes(&kubeconfig(&api, logs.path()), "gw-1", &[], logs.path());
    let status = api
        .wait_status(&hub(), "the refusal on the set", |s| {
            s["errors"][0].as_str().is_some_and(|e| e.contains("(403)"))
        })
        .await;
    let error = status["errors"][0].as_str().unwrap();
    assert!(
        error.contains("managedclusters.cluster.open-cluster-management.io")
            && error.contains("discovery.managedClusters=true"),
        "{error}"
    );
    assert_eq!(status["members"], 0);
    assert_eq!(status["conditions"][0]["reason"], "GeneratorErrors");
    assert!(served(&gateway).is_empty());
}

//! The Kubernetes source end to end: the real gateway binary, with the real
//! kube client, against the project's in-process Kubernetes API test server
//! (tests/integration/kube_api.rs; no kube-apiserver installs here).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::kube_api::KubeApiServer;
use serde_json::{Value, json};

fn kubeconfig(api: &KubeApiServer, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig.yaml");
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: '{}'}}}}]\nusers: [{{name: test, user: {{}}}}]\ncontexts: [{{name: test, context: {{cluster: test, user: test, namespace: default}}}}]\ncurrent-context: test\n",
        api.base_url()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

fn sim_object(ns: &str, name: &str, cluster: &str, extra_spec: Value) -> Value {
    let mut spec = json!({
        "type": "stdio",
        "command": env!("CARGO_BIN_EXE_flotilla"),
        "args": ["sim-cluster", "--cluster", cluster],
        "timeout": 10
    });
    if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra_spec) {
        spec.extend(extra);
    }
    json!({
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "MCPServer",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec
    })
}

/// What names the MCPServer `ns/name` to the API server.
fn server_key(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServer", "metadata": {"name": name, "namespace": ns}})
}

fn status_of(api: &KubeApiServer, ns: &str, name: &str) -> Value {
    api.status_of(&server_key(ns, name))
}

async fn wait_status(
    api: &KubeApiServer,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    api.wait_status(&server_key(ns, name), what, check).await
}

#[tokio::test(flavor = "multi_thread")]
async fn applying_changing_and_deleting_an_mcpserver_changes_the_tools() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    api.apply_object(sim_object("team-a", "sim-a", "cluster-a", json!({})));
    let gateway =
        Gateway::start_kubernetes(&kubeconfig(&api, logs.path()), "gw-1", &[], logs.path());
    let client = connect(&gateway.url()).await;
    wait_tool(&client, "x_sim-a_list_pods").await;

    // A label change updates metadata only: the session is kept.
    let connected = wait_status(&api, "team-a", "sim-a", "Connected status", |s| {
        s["state"] == "Connected"
    })
    .await["lastConnected"]
        .clone();
    let mut labelled = sim_object("team-a", "sim-a", "cluster-a", json!({}));
    labelled["metadata"]["labels"] = json!({"env": "prod"});
    api.apply_object(labelled);
    eventually(
        Duration::from_secs(10),
        "the label to reach the fleet overview",
        || {
            let client = &client;
            async move {
                let overview = call(client, "flotilla_list_fleet", json!({})).await;
                (overview.structured_content.unwrap()["servers"][0]["labels"]["env"] == "prod")
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        status_of(&api, "team-a", "sim-a")["lastConnected"],
        connected,
        "not reconnected"
    );

    // A spec change reconnects that server under its new prefix.
    api.apply_object(sim_object(
        "team-a",
        "sim-a",
        "cluster-a",
        json!({"toolPrefix": "alpha"}),
    ));
    wait_tool(&client, "x_alpha_cluster_info").await;
    // Labels are metadata: only the spec change bumped the generation.
    wait_status(&api, "team-a", "sim-a", "observedGeneration 2", |s| {
        s["observedGeneration"] == 2
    })
    .await;

    api.delete_object(&sim_object("team-a", "sim-a", "cluster-a", json!({})));
    wait_tools(&client, "the tools to go", |names| {
        !names.iter().any(|n| n.starts_with("x_alpha"))
    })
    .await;
    assert!(api.unmatched().is_empty(), "{:?}", api.unmatched());
}

#[tokio::test(flavor = "multi_thread")]
async fn status_conditions_printer_columns_and_events_are_written_for_each_object() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    let mut good = sim_object(
        "team-a",
        "cluster-a-mcp-kubernetes",
        "cluster-a",
        // No family.instance: the INSTANCE column shows the derived one.
        json!({
            "family": {"name": "kubernetes"}
        }),
    );
    good["metadata"]["labels"] = json!({"env": "prod"});
    api.apply_object(good.clone());
    // A malformed object: it must not stop the watch or the others.
    api.apply_object(json!({
        "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServer",
        "metadata": {"name": "broken", "namespace": "team-a"},
        "spec": {"type": "carrier-pigeon"}
    }));
    let _gateway =
        Gateway::start_kubernetes(&kubeconfig(&api, logs.path()), "gw-1", &[], logs.path());
    let status = wait_status(
        &api,
        "team-a",
        "cluster-a-mcp-kubernetes",
        "Connected",
        |s| s["state"] == "Connected",
    )
    .await;
    assert_eq!(status["toolCount"], 4);
    assert_eq!(status["observedGeneration"], 1);
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("Connected"))
    );
    assert!(ready["lastTransitionTime"].is_string());

    let broken = wait_status(&api, "team-a", "broken", "Invalid", |s| {
        s["state"] == "Invalid"
    })
    .await;
    assert!(
        broken["lastError"]
            .as_str()
            .unwrap()
            .contains("carrier-pigeon"),
        "{broken}"
    );
    assert_eq!(broken["conditions"][0]["reason"], "InvalidSpec");

    // `kubectl get mcps` columns: every printer column's jsonPath resolves.
    let crd: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo().join("crds/mcpserver.yaml")).unwrap(),
    )
    .unwrap();
    let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .clone();
    let object = api.get_object(&good).unwrap();
    let mut row = vec![];
    for column in &columns {
        let path = column["jsonPath"].as_str().unwrap().trim_start_matches('.');
        let value = path
            .split('.')
            .fold(object.clone(), |v, key| v[key].clone());
        row.push((column["name"].as_str().unwrap().to_string(), value));
    }
    let row: std::collections::BTreeMap<_, _> = row.into_iter().collect();
    assert_eq!(row["Type"], "stdio");
    assert_eq!(row["Family"], "kubernetes");
    assert_eq!(row["Instance"], "cluster-a");
    assert_eq!(row["State"], "Connected");
    assert_eq!(row["Tools"], 4);
    assert!(row["Age"].is_string());

    // Events: a Connected event for the good one, InvalidSpec for the broken one.
    let events = eventually(Duration::from_secs(10), "events", || async {
        let client = api.client();
        let events: kube::Api<k8s_openapi::api::events::v1::Event> =
            kube::Api::namespaced(client, "team-a");
        let list = events.list(&Default::default()).await.ok()?;
        let reasons: Vec<(String, String)> = list
            .items
            .iter()
            .map(|e| {
                (
                    e.regarding
                        .as_ref()
                        .and_then(|r| r.name.clone())
                        .unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                )
            })
            .collect();
        (reasons
            .iter()
            .any(|(n, r)| n == "cluster-a-mcp-kubernetes" && r == "Connected")
            && reasons
                .iter()
                .any(|(n, r)| n == "broken" && r == "InvalidSpec"))
        .then_some(reasons)
    })
    .await;
    assert!(!events.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_is_picked_up_without_a_restart_and_never_shown() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    let (_py, url) = python_server(0, logs.path());
    // base64 `data`, as `kubectl create secret` writes it.
    let secret = |token: &str| {
        use base64::Engine as _;
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "py-creds", "namespace": "team-a"},
            "data": {"token": base64::engine::general_purpose::STANDARD.encode(token)}
        })
    };
    api.apply_object(secret("first-s3cret-value"));
    api.apply_object(json!({
        "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServer",
        "metadata": {"name": "py", "namespace": "team-a"},
        "spec": {"url": url, "timeout": 10,
                 "headersFrom": [{"secretName": "py-creds", "key": "token", "header": "Authorization", "prefix": "Bearer "}]}
    }));
    let gateway = Gateway::start_kubernetes(
        &kubeconfig(&api, logs.path()),
        "gw-1",
        &["--namespace", "team-a"],
        logs.path(),
    );
    let client = connect(&gateway.url()).await;
    wait_tool(&client, "x_py_auth_header").await;
    let seen = text_of(&call(&client, "x_py_auth_header", json!({})).await);
    assert_eq!(seen, "Bearer first-s3cret-value");
    api.apply_object(secret("second-s3cret-value"));
    eventually(
        Duration::from_secs(15),
        "the rotated token upstream",
        || {
            let client = &client;
            async move {
                let seen = text_of(&call(client, "x_py_auth_header", json!({})).await);
                (seen == "Bearer second-s3cret-value").then_some(())
            }
        },
    )
    .await;
    // A Secret that loses its key is reported without its value, and the
    // server keeps serving its last good credentials.
    api.apply_object(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "py-creds", "namespace": "team-a"}, "data": {}}));
    let status = wait_status(&api, "team-a", "py", "InvalidSpec", |s| {
        s["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "InvalidSpec"))
    })
    .await;
    assert!(
        status.to_string().contains("has no key \\\"token\\\""),
        "{status}"
    );
    assert_eq!(
        text_of(&call(&client, "x_py_auth_header", json!({})).await),
        "Bearer second-s3cret-value"
    );

    let everything_shown = format!(
        "{}\n{}\n{}",
        gateway.proc.log_text(),
        gateway.get_json("/status"),
        api.request_log().join("\n")
    );
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(api.client(), "team-a");
    let events =
        serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap();
    for shown in [
        everything_shown.as_str(),
        events.as_str(),
        &status_of(&api, "team-a", "py").to_string(),
    ] {
        assert!(!shown.contains("s3cret-value"), "a secret value leaked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_fleet_of_fifty_servers_makes_close_to_zero_status_writes() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    let (_py, url) = python_server(0, logs.path());
    for i in 0..50 {
        api.apply_object(json!({
            "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServer",
            "metadata": {"name": format!("py-{i:02}"), "namespace": "fleet"},
            "spec": {"url": url, "timeout": 10}
        }));
    }
    let config = logs.path().join("gateway.yaml");
    std::fs::write(&config, "pingIntervalSeconds: 1\n").unwrap();
    let _gateway = Gateway::start_kubernetes(
        &kubeconfig(&api, logs.path()),
        "gw-1",
        &["--config", config.to_str().unwrap()],
        logs.path(),
    );
    for i in 0..50 {
        wait_status(&api, "fleet", &format!("py-{i:02}"), "Connected", |s| {
            s["state"] == "Connected" && s["toolCount"] == 11
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = || {
        api.request_count("patch", "mcpservers", "status")
            + api.request_count("update", "mcpservers", "status")
    };
    let before = writes();
    let started = Instant::now();
    // Health checks run every second meanwhile.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = writes() - before;
    println!(
        "status writes in {:?} of a healthy 50-server fleet: {during}",
        started.elapsed()
    );
    assert_eq!(during, 0, "no status writes while nothing changes");
    assert!(before <= 50 * 3, "start-up writes stay bounded: {before}");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_expiry_and_relist_lose_no_change() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    api.apply_object(sim_object("team-a", "sim-a", "cluster-a", json!({})));
    let gateway =
        Gateway::start_kubernetes(&kubeconfig(&api, logs.path()), "gw-1", &[], logs.path());
    let client = connect(&gateway.url()).await;
    wait_tool(&client, "x_sim-a_cluster_info").await;
    // A change no open watch hears of, then history compacted: resuming a
    // watch gets 410 Gone, and only a relist can show the change.
    api.compact();
    api.apply_object_unseen(sim_object("team-a", "sim-b", "cluster-b", json!({})));
    api.compact();
    let lists = api.request_count("list", "mcpservers", "");
    api.end_watches();
    wait_tool(&client, "x_sim-b_cluster_info").await;
    assert!(
        api.request_count("list", "mcpservers", "") > lists,
        "a relist happened: {:?}",
        api.request_log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_after_an_api_outage_is_picked_up_within_seconds() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    api.apply_object(sim_object("fleet", "sim-a", "cluster-a", json!({})));
    let gateway =
        Gateway::start_kubernetes(&kubeconfig(&api, logs.path()), "gw-1", &[], logs.path());
    let client = connect(&gateway.url()).await;
    wait_tool(&client, "x_sim-a_cluster_info").await;
    // 20 s down: the watch retries back off meanwhile, never more than 5 s
    // apart (kube's default backoff would wait 6.4, then 12.8 s).
    let tries = || {
        api.request_log()
            .iter()
            .filter(|line| line.starts_with("GET ") && line.contains("/mcpservers?"))
            .count()
    };
    api.set_down(true);
    let down = std::time::Instant::now();
    let (mut seen, mut times) = (tries(), Vec::new());
    while down.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = tries();
        if now > seen {
            times.push(down.elapsed());
            seen = now;
        }
    }
    api.set_down(false);
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(times.len() >= 4, "retried during the outage: {times:?}");
    assert!(
        gaps.iter().all(|gap| *gap < Duration::from_millis(6500)),
        "retries at most 5 s (plus jitter) apart: {times:?}"
    );
    // And a change made once it is back is served within seconds.
    let back = std::time::Instant::now();
    api.apply_object(sim_object("fleet", "sim-b", "cluster-b", json!({})));
    wait_tool(&client, "x_sim-b_cluster_info").await;
    assert!(
        back.elapsed() < Duration::from_secs(9),
        "picked up {:?} after the API came back",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_the_gateway_may_not_read_degrades_only_what_depends_on_it() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    // No RoleBinding for Secrets in team-b.
    api.forbid("team-b", "secrets");
    api.apply_object(sim_object("team-a", "sim-a", "cluster-a", json!({})));
    api.apply_object(sim_object(
        "team-b",
        "needs-creds",
        "cluster-b",
        json!({"headersFrom": [{"secretName": "creds", "key": "token", "header": "Authorization"}]}),
    ));
    api.apply_object(sim_object("team-b", "sim-b", "cluster-b", json!({})));
    let gateway = Gateway::start_kubernetes(
        &kubeconfig(&api, logs.path()),
        "gw-1",
        &["--namespace", "team-a", "--namespace", "team-b"],
        logs.path(),
    );
    // Ready, and serving what needs no Secret, in both namespaces.
    let client = connect(&gateway.url()).await;
    wait_tool(&client, "x_sim-a_cluster_info").await;
    wait_tool(&client, "x_sim-b_cluster_info").await;
    // The server that needs one says why, on its status.
    let status = wait_status(
        &api,
        "team-b",
        "needs-creds",
        "Invalid with the reason",
        |s| {
            s["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("may not read Secrets in namespace team-b"))
        },
    )
    .await;
    assert_eq!(status["state"], "Invalid", "{status}");
    // The log says what to do, once.
    let log = gateway.proc.log_text();
    let advice = "grant its service account get, list and watch on secrets there";
    assert_eq!(log.matches(advice).count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_crd_is_logged_with_the_fix() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    api.set_served("mcpservers", false);
    let kubeconfig = kubeconfig(&api, logs.path());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.args(["serve", "--port", "0", "--kubernetes"])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "gw-1")
        .env("POD_NAMESPACE", "flotilla-system");
    let gateway = Proc::spawn("gateway-no-crd", cmd, logs.path());
    let line = gateway.wait_line("listening on", Duration::from_secs(30));
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches("/mcp").parse().ok())
        .unwrap();
    let logged = eventually(
        Duration::from_secs(10),
        "the missing CRD in the log",
        || {
            let log = gateway.log_text();
            async move {
                log.contains("CustomResourceDefinition is not installed")
                    .then_some(log)
            }
        },
    )
    .await;
    assert!(
        logged.contains("flotilla crd | kubectl apply -f -"),
        "{logged}"
    );
    assert_eq!(
        http_get(port, "/readyz").0,
        503,
        "not ready without the CRD"
    );
    // Installed: the gateway becomes ready without a restart.
    api.set_served("mcpservers", true);
    api.apply_object(sim_object("team-a", "sim-a", "cluster-a", json!({})));
    eventually(
        Duration::from_secs(60),
        "ready once the CRD exists",
        || async { (http_get(port, "/readyz").0 == 200).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_shutdown_hands_the_lease_over_at_once() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    api.apply_object(sim_object("team-a", "sim-a", "cluster-a", json!({})));
    let kubeconfig = kubeconfig(&api, logs.path());
    // A long Lease: waiting it out would take a minute.
    let mut gateway = Gateway::start_kubernetes(
        &kubeconfig,
        "gw-1",
        &["--lease-duration", "60"],
        logs.path(),
    );
    let lease_key = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "flotilla-status-writer", "namespace": "flotilla-system"}});
    let holder = || {
        api.get_object(&lease_key)
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    eventually(Duration::from_secs(10), "gw-1 to lead", || {
        let h = holder().filter(|h| h == "gw-1");
        async move { h }
    })
    .await;
    // SIGTERM, as a rolling update sends: the Lease is free when the process is gone.
    gateway.proc.stop();
    assert_eq!(holder(), None, "{}", gateway.proc.log_text());
    let next = Gateway::start_kubernetes(
        &kubeconfig,
        "gw-2",
        &["--lease-duration", "60"],
        logs.path(),
    );
    eventually(Duration::from_secs(10), "gw-2 to lead at once", || {
        let h = holder().filter(|h| h == "gw-2");
        async move { h }
    })
    .await;
    drop(next);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_leader_dies_the_other_replica_takes_over_status_writes() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    for (name, cluster) in [
        ("sim-a", "cluster-a"),
        ("sim-b", "cluster-b"),
        ("sim-c", "cluster-c"),
    ] {
        api.apply_object(sim_object("team-a", name, cluster, json!({})));
    }
    let kubeconfig = kubeconfig(&api, logs.path());
    let args = ["--lease-duration", "3"];
    let mut replicas = [
        Gateway::start_kubernetes(&kubeconfig, "gw-1", &args, logs.path()),
        Gateway::start_kubernetes(&kubeconfig, "gw-2", &args, logs.path()),
    ];
    let lease_key = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "flotilla-status-writer", "namespace": "flotilla-system"}});
    let holder = || {
        api.get_object(&lease_key)
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    let first = eventually(Duration::from_secs(10), "a lease holder", || {
        let h = holder();
        async move { h }
    })
    .await;
    wait_status(&api, "team-a", "sim-a", "Connected", |s| {
        s["state"] == "Connected"
    })
    .await;
    // Every replica serves MCP from its own upstream sessions.
    for gateway in &replicas {
        let client = connect(&gateway.url()).await;
        wait_tool(&client, "x_sim-a_cluster_info").await;
    }
    for name in ["sim-b", "sim-c"] {
        wait_status(&api, "team-a", name, "Connected", |s| {
            s["state"] == "Connected"
        })
        .await;
    }
    // Let the leader's last writes land, then count what it wrote.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let patches = || api.request_count("patch", "mcpservers", "status");
    let events = || api.request_count("create", "events", "");
    let (patched, announced) = (patches(), events());
    let (dead, alive) = if first == "gw-1" { (0, 1) } else { (1, 0) };
    replicas[dead].proc.kill();
    let second = eventually(
        Duration::from_secs(15),
        "the other replica to take the lease",
        || {
            let h = holder().filter(|h| *h != first);
            async move { h }
        },
    )
    .await;
    assert_eq!(second, if alive == 0 { "gw-1" } else { "gw-2" });
    // The new leader finds every status already right: it writes nothing
    // and announces nothing again (its own lastConnected is no difference).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(patches(), patched, "{:?}", api.request_log());
    assert_eq!(events(), announced, "no duplicate events");
    // The new leader writes status for changes made after the failover.
    api.apply_object(sim_object(
        "team-a",
        "sim-a",
        "cluster-a",
        json!({"toolPrefix": "after"}),
    ));
    wait_status(&api, "team-a", "sim-a", "status from the new leader", |s| {
        s["observedGeneration"] == 2 && s["state"] == "Connected"
    })
    .await;
    let client = connect(&replicas[alive].url()).await;
    wait_tool(&client, "x_after_cluster_info").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_someone_else_overwrote_is_written_back() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    api.apply_object(sim_object("team-a", "sim-a", "cluster-a", json!({})));
    let _gateway =
        Gateway::start_kubernetes(&kubeconfig(&api, logs.path()), "gw-1", &[], logs.path());
    wait_status(&api, "team-a", "sim-a", "Connected", |s| {
        s["state"] == "Connected"
    })
    .await;
    // `kubectl patch --subresource=status` by someone else.
    let client = api.client();
    let servers: kube::Api<flotilla::api::MCPServer> = kube::Api::namespaced(client, "team-a");
    servers
        .patch_status(
            "sim-a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"status": {"state": "Failed", "lastError": "set by hand"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status_of(&api, "team-a", "sim-a")["state"], "Failed");
    let status = wait_status(
        &api,
        "team-a",
        "sim-a",
        "the leader to write it back",
        |s| s["state"] == "Connected",
    )
    .await;
    assert!(status["lastError"].is_null(), "{status}");
}

/// SSO in Kubernetes mode: the exchange's client credentials come from a
/// Secret through the gateway's Secret watch; a rotated secret reaches new
/// exchanges; the MCPServer's status says it connects per user.
#[tokio::test(flavor = "multi_thread")]
async fn an_exchanging_mcpserver_uses_client_credentials_from_its_secret() {
    use crate::common::idp::{Idp, gateway_login, jwt_claims};
    use crate::common::sso_world::{connect_as, py_server_with, token_seen_by, write_config};
    use base64::Engine as _;
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    let central = Idp::central(
        logs.path(),
        &[(
            "flotilla",
            crate::common::sso_world::GW_SECRET,
            &["http://127.0.0.1/oauth/callback"],
        )],
        3600,
    );
    let dex = Idp::cluster(
        logs.path(),
        "dex-k",
        &central.issuer,
        &[
            ("flotilla-k", "k-secret-one"),
            ("flotilla-k2", "k-secret-two"),
        ],
        "cluster-k",
        3600,
        None,
    );
    let (_py, py_url) = py_server_with(
        logs.path(),
        "py-k",
        &["--require-bearer", &dex.issuer, "--audience", "cluster-k"],
    );
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secret = |id: &str, secret: &str| {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "dex-k-client", "namespace": "team-a"},
            "data": {"client-id": b64(id), "client-secret": b64(secret)}
        })
    };
    api.apply_object(secret("flotilla-k", "k-secret-one"));
    api.apply_object(json!({
        "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServer",
        "metadata": {"name": "cluster-k", "namespace": "team-a"},
        "spec": {
            "type": "streamable-http", "url": py_url, "timeout": 10,
            "auth": {"tokenExchange": {
                "enabled": true,
                "dexTokenEndpoint": dex.token_endpoint(),
                "connectorId": "central",
                "clientCredentialsSecretRef": {"name": "dex-k-client"}
            }}
        }
    }));
    let config = write_config(logs.path(), &central, "{}", "{warmupSeconds: 10}");
    let gateway = Gateway::start_kubernetes(
        &kubeconfig(&api, logs.path()),
        "gw-1",
        &[
            "--namespace",
            "team-a",
            "--config",
            config.to_str().unwrap(),
        ],
        logs.path(),
    );
    let status = wait_status(&api, "team-a", "cluster-k", "AuthRequired", |s| {
        s["state"] == "AuthRequired"
    })
    .await;
    assert!(
        status["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("per user")),
        "{status}"
    );
    let login = gateway_login(&format!("http://127.0.0.1:{}", gateway.port), "alice");
    let client = connect_as(&gateway.url(), &login.access_token).await;
    let seen = token_seen_by(&client, "x_cluster-k_auth_header").await;
    let claims = jwt_claims(&seen);
    assert_eq!(claims["iss"], dex.issuer.as_str());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(dex.stats()["exchanges"]["alice|flotilla-k"], 1);

    // Rotating the Secret to another client: the next user's exchange uses it.
    api.apply_object(secret("flotilla-k2", "k-secret-two"));
    let bob = gateway_login(&format!("http://127.0.0.1:{}", gateway.port), "bob");
    let bob_client = connect_as(&gateway.url(), &bob.access_token).await;
    eventually(
        Duration::from_secs(20),
        "bob's exchange as the new client",
        || async {
            let result = call(&bob_client, "x_cluster-k_auth_header", json!({})).await;
            (result.is_error != Some(true) && dex.stats()["exchanges"]["bob|flotilla-k2"] == 1)
                .then_some(())
        },
    )
    .await;
    let log = gateway.proc.log_text();
    for secret in ["k-secret-one", "k-secret-two", seen.as_str()] {
        assert!(!log.contains(secret), "a secret appears in the gateway log");
    }
    client.cancel().await.ok();
    bob_client.cancel().await.ok();
}

fn policy_object(ns: &str, name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "ToolPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"rules": rules}
    })
}

fn policy_status_of(api: &KubeApiServer, ns: &str, name: &str) -> Value {
    api.status_of(&policy_object(ns, name, json!([])))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_toolpolicy_resource_applies_and_gets_its_status_and_a_broken_edit_keeps_its_rules() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    api.apply_object(sim_object("team-a", "sim-a", "cluster-a", json!({})));
    let gateway =
        Gateway::start_kubernetes(&kubeconfig(&api, logs.path()), "gw-1", &[], logs.path());
    let client = connect(&gateway.url()).await;
    wait_tool(&client, "x_sim-a_get_events").await;

    api.apply_object(policy_object(
        "ops",
        "no-events",
        json!([{"name": "hide-events", "effect": "deny", "match": {"tools": ["get_events"]}}]),
    ));
    eventually(Duration::from_secs(20), "get_events hidden", || {
        let client = &client;
        async move {
            let tools = list_tools(client).await;
            (!tools.iter().any(|t| t.name == "x_sim-a_get_events")).then_some(())
        }
    })
    .await;
    let denied = call(&client, "x_sim-a_get_events", json!({})).await;
    assert!(
        text_of(&denied).contains("hide-events"),
        "{}",
        text_of(&denied)
    );
    let status = eventually(Duration::from_secs(20), "the policy's status", || {
        let status = policy_status_of(&api, "ops", "no-events");
        async move { (status["state"] == "Active").then_some(status) }
    })
    .await;
    assert_eq!(status["ruleCount"], 1, "{status}");
    assert_eq!(status["conditions"][0]["type"], "Ready", "{status}");
    assert_eq!(status["conditions"][0]["status"], "True", "{status}");

    // A broken edit: reported on the object, the last good rule still applies.
    api.apply_object(policy_object(
        "ops",
        "no-events",
        json!([{"effect": "deny", "match": {"labels": "env=prod,=x"}}]),
    ));
    let status = eventually(Duration::from_secs(20), "the broken edit reported", || {
        let status = policy_status_of(&api, "ops", "no-events");
        async move { (status["conditions"][0]["status"] == "False").then_some(status) }
    })
    .await;
    assert_eq!(status["state"], "Active", "{status}");
    assert!(
        status["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.rules[0].match.labels"),
        "{status}"
    );
    let still = call(&client, "x_sim-a_get_events", json!({})).await;
    assert_eq!(still.is_error, Some(true), "the last good deny holds");

    // Deleted: lifted.
    api.delete_object(&policy_object("ops", "no-events", json!([])));
    wait_tool(&client, "x_sim-a_get_events").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn toolpolicies_the_gateway_may_not_read_keep_it_unready_and_a_missing_crd_means_none() {
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    api.apply_object(sim_object("team-a", "sim-a", "cluster-a", json!({})));
    api.set_served("toolpolicies", false);
    // No ToolPolicy CRD: nothing can be declared, so the gateway serves.
    let gateway =
        Gateway::start_kubernetes(&kubeconfig(&api, logs.path()), "gw-1", &[], logs.path());
    let client = connect(&gateway.url()).await;
    wait_tool(&client, "x_sim-a_get_events").await;
    eventually(Duration::from_secs(10), "the missing CRD logged", || {
        let log = gateway.proc.log_text();
        async move {
            log.contains("ToolPolicy CustomResourceDefinition is not installed")
                .then_some(())
        }
    })
    .await;

    // Policies it may not read (403): a deny could hide there, so not ready.
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    api.apply_object(sim_object("team-a", "sim-a", "cluster-a", json!({})));
    api.forbid("team-a", "toolpolicies");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.args([
        "serve",
        "--port",
        "0",
        "--kubernetes",
        "--namespace",
        "team-a",
    ])
    .env("KUBECONFIG", kubeconfig(&api, logs.path()))
    .env("POD_NAME", "gw-1")
    .env("POD_NAMESPACE", "flotilla-system");
    let gateway = Proc::spawn("gateway-forbidden-policies", cmd, logs.path());
    let line = gateway.wait_line("listening on", Duration::from_secs(30));
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches("/mcp").parse().ok())
        .unwrap();
    let log = eventually(Duration::from_secs(10), "the refusal logged", || {
        let log = gateway.log_text();
        async move { log.contains("may not read ToolPolicies").then_some(log) }
    })
    .await;
    assert!(log.contains("toolpolicies.flotilla.dev"), "{log}");
    assert_eq!(
        http_get(port, "/readyz").0,
        503,
        "not ready while policies are hidden"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_mcpserver_admits_its_agent_with_the_credential_from_its_secret() {
    use base64::Engine as _;
    let logs = tempfile::tempdir().unwrap();
    let api = KubeApiServer::start();
    let credential = "north-agent-s3cret-value-1357";
    api.apply_object(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "agent-north", "namespace": "team-a"},
        "data": {"credential": base64::engine::general_purpose::STANDARD.encode(credential)}
    }));
    api.apply_object(json!({
        "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServer",
        "metadata": {"name": "north-mcp-kubernetes", "namespace": "team-a"},
        "spec": {"type": "agent", "timeout": 10,
                 "agent": {"name": "north",
                           "credentialFrom": {"secretName": "agent-north", "key": "credential"}}}
    }));
    let gateway = Gateway::start_kubernetes(
        &kubeconfig(&api, logs.path()),
        "gw-1",
        &["--namespace", "team-a"],
        logs.path(),
    );
    let north = crate::agents::Cluster::new("north", credential);
    let _agent = north.agent(&gateway);
    let status = wait_status(&api, "team-a", "north-mcp-kubernetes", "Connected", |s| {
        s["state"] == "Connected"
    })
    .await;
    assert!(status["toolCount"].as_u64().unwrap_or(0) > 0, "{status}");
    let client = connect(&gateway.url()).await;
    let info = call(&client, "x_north-mcp-kubernetes_cluster_info", json!({})).await;
    assert!(
        text_of(&info).contains("cluster: north"),
        "{}",
        text_of(&info)
    );
    let shown = format!(
        "{}\n{}\n{}",
        gateway.proc.log_text(),
        gateway.get_json("/status"),
        status_of(&api, "team-a", "north-mcp-kubernetes")
    );
    assert!(!shown.contains("s3cret-value"), "the credential leaked");
}

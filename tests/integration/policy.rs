//! Tool policy end to end: a simulated fleet with a prod and a dev cluster
//! (each with the destructive `delete_pod`), a ToolPolicy in the watched
//! directory, and callers named by the insecure demo headers. Lists,
//! denials, confirmation through a real client's elicitation (the Python
//! `mcp` SDK client, in its 2026-07-28 and 2025 modes), fan-out exclusions,
//! live policy edits and the audit log.

use std::collections::HashMap;
use std::time::Duration;

use rmcp::ServiceExt as _;
use rmcp::model::Tool;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use crate::common::fleet::Fleet;
use crate::common::*;

/// Prod is read-only except for group `sre`, whose destructive prod calls
/// are confirmed by the user.
const PROD_GUARD: &str = r#"
apiVersion: flotilla.dev/v1alpha1
kind: ToolPolicy
metadata: {name: prod-guard}
spec:
  rules:
  - name: prod-read-only
    effect: readOnly
    match: {labels: env=prod}
    except: {groups: [sre]}
    message: Ask the SRE on call.
  - name: sre-confirms-prod
    effect: confirm
    match: {labels: env=prod, groups: [sre]}
"#;

fn policy_fleet(config: &str) -> crate::common::Gateway {
    let fleet = Fleet::new()
        .sim("prod-a", "prod-a")
        .flag("--writable")
        .family("kubernetes")
        .labels(&[("env", "prod")])
        .connected()
        .sim("dev-a", "dev-a")
        .flag("--writable")
        .family("kubernetes")
        .labels(&[("env", "dev")])
        .connected()
        .manifest("policy.yaml", PROD_GUARD)
        .serve_flag("--insecure-demo-identity");
    let fleet = if config.is_empty() {
        fleet
    } else {
        fleet.config(config)
    };
    fleet.start()
}

/// An rmcp client (2025-11-25 session) calling as `user` in `groups`.
async fn connect_as_demo(url: &str, user: &str, groups: &str, handler: TestClient) -> Client {
    let mut headers = HashMap::new();
    headers.insert(
        http::HeaderName::from_static("x-flotilla-demo-user"),
        http::HeaderValue::from_str(user).unwrap(),
    );
    headers.insert(
        http::HeaderName::from_static("x-flotilla-demo-groups"),
        http::HeaderValue::from_str(groups).unwrap(),
    );
    let config =
        StreamableHttpClientTransportConfig::with_uri(url.to_string()).custom_headers(headers);
    handler
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

fn instance_enum(tools: &[Tool], name: &str) -> Vec<String> {
    let tool = tools
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{name} is not listed"));
    let schema = Value::Object((*tool.input_schema).clone());
    schema["properties"]["instance"]["anyOf"][0]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} has no instance enum: {schema}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// The first pod of a simulated cluster, as (namespace, name).
async fn first_pod(client: &Client, instance: &str) -> (String, String) {
    let pods = call(
        client,
        "x_kubernetes_list_pods",
        json!({"instance": instance}),
    )
    .await;
    let pod = &pods.structured_content.expect("list_pods is structured")["pods"][0];
    (
        pod["namespace"].as_str().unwrap().to_string(),
        pod["name"].as_str().unwrap().to_string(),
    )
}

/// `x_kubernetes_delete_pod` of `pod` (namespace, name) on `instance`.
async fn delete_pod(
    client: &Client,
    instance: &str,
    (namespace, pod): (&str, &str),
) -> rmcp::model::CallToolResult {
    call(
        client,
        "x_kubernetes_delete_pod",
        json!({"instance": instance, "namespace": namespace, "pod": pod}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sre_and_dev_see_different_tools_and_instances() {
    let gateway = policy_fleet("");
    let sre = connect_as_demo(&gateway.url(), "alice", "sre", TestClient::default()).await;
    let dev = connect_as_demo(&gateway.url(), "bob", "dev", TestClient::default()).await;
    let anonymous = connect(&gateway.url()).await;

    let sre_tools = list_tools(&sre).await;
    let dev_tools = list_tools(&dev).await;
    assert_eq!(
        instance_enum(&sre_tools, "x_kubernetes_delete_pod"),
        ["dev-a", "prod-a"]
    );
    assert_eq!(
        instance_enum(&dev_tools, "x_kubernetes_delete_pod"),
        ["dev-a"],
        "dev may delete on dev only"
    );
    assert_eq!(
        instance_enum(&dev_tools, "x_kubernetes_list_pods"),
        ["dev-a", "prod-a"],
        "read-only tools stay on prod"
    );
    let anonymous_tools = list_tools(&anonymous).await;
    assert_eq!(
        instance_enum(&anonymous_tools, "x_kubernetes_delete_pod"),
        ["dev-a"],
        "anonymous callers are not in group sre"
    );
    // The stateless fast path serves the same filtered list.
    let stateless = py_client(
        &gateway.url(),
        &[
            "--header",
            "X-Flotilla-Demo-User: bob",
            "--header",
            "X-Flotilla-Demo-Groups: dev",
            "list-tools",
        ],
    );
    let listed: Vec<Tool> = serde_json::from_value(stateless["tools"].clone()).unwrap();
    assert_eq!(instance_enum(&listed, "x_kubernetes_delete_pod"), ["dev-a"]);

    // /status reports the policy in force.
    let status = gateway.get_json("/status");
    assert_eq!(status["policies"][0]["name"], "prod-guard");
    assert_eq!(status["policies"][0]["state"], "Active");
    assert_eq!(status["policies"][0]["rules"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destructive_prod_call_is_denied_for_dev_naming_the_rule_and_audited() {
    let audit = tempfile::tempdir().unwrap();
    let audit_file = audit.path().join("audit.jsonl");
    let gateway = policy_fleet(&format!(
        "audit: {{enabled: true, file: {:?}}}\n",
        audit_file.display().to_string()
    ));
    let dev = connect_as_demo(&gateway.url(), "bob", "dev", TestClient::default()).await;
    let (namespace, pod) = first_pod(&dev, "prod-a").await;
    let denied = delete_pod(&dev, "prod-a", (&namespace, &pod)).await;
    assert_eq!(denied.is_error, Some(true));
    let text = text_of(&denied);
    assert!(
        text.contains("rule \"prod-read-only\" of policy \"prod-guard\"")
            && text.contains("instance \"prod-a\"")
            && text.contains("Ask the SRE on call."),
        "{text}"
    );
    // The pod is still there: the upstream never saw the call.
    assert_eq!(first_pod(&dev, "prod-a").await, (namespace, pod));

    // On dev, dev may delete.
    let (namespace, pod) = first_pod(&dev, "dev-a").await;
    let deleted = delete_pod(&dev, "dev-a", (&namespace, &pod)).await;
    assert_ne!(deleted.is_error, Some(true), "{}", text_of(&deleted));
    assert!(
        text_of(&deleted).contains("deleted"),
        "{}",
        text_of(&deleted)
    );

    let line = eventually(Duration::from_secs(5), "the denial's audit line", || {
        let text = std::fs::read_to_string(&audit_file).unwrap_or_default();
        async move {
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|l| l["outcome"] == "denied")
        }
    })
    .await;
    assert_eq!(line["tool"], "x_kubernetes_delete_pod");
    assert_eq!(line["policyRule"], "prod-guard/prod-read-only");
    assert_eq!(line["caller"]["subject"], "bob");
    assert_eq!(line["targets"][0]["instance"], "prod-a");
}

#[tokio::test(flavor = "multi_thread")]
async fn sre_confirms_through_elicitation_and_a_client_that_cannot_elicit_is_refused() {
    let gateway = policy_fleet("");
    let url = gateway.url();
    let reader = connect(&url).await;
    let sre = [
        "--header",
        "X-Flotilla-Demo-User: alice",
        "--header",
        "X-Flotilla-Demo-Groups: sre",
    ];
    let delete = |pod: &(String, String)| {
        json!({"instance": "prod-a", "namespace": pod.0, "pod": pod.1}).to_string()
    };
    let with = |extra: &[&str], args: String| {
        let mut all: Vec<String> = sre.iter().map(|s| s.to_string()).collect();
        all.extend(extra.iter().map(|s| s.to_string()));
        all.extend(["call".into(), "x_kubernetes_delete_pod".into(), args]);
        py_client(&url, &all.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // A client without elicitation: denied, and nothing was deleted.
    let pod = first_pod(&reader, "prod-a").await;
    let refused = with(&[], delete(&pod));
    assert_eq!(refused["isError"], true, "{refused}");
    let text = refused["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("cannot be asked"), "{text}");
    assert_eq!(first_pod(&reader, "prod-a").await, pod);

    // The user declines: not run.
    let declined = with(&["--elicit-answer", r#"{"confirm": false}"#], delete(&pod));
    assert_eq!(declined["isError"], true, "{declined}");
    assert!(
        declined["asked"][0]
            .as_str()
            .unwrap_or_default()
            .contains("sre-confirms-prod"),
        "{declined}"
    );
    assert_eq!(first_pod(&reader, "prod-a").await, pod);

    // Confirmed, by a 2026-07-28 client (input_required, then the retry).
    let confirmed = with(&["--elicit-answer", r#"{"confirm": true}"#], delete(&pod));
    assert_ne!(confirmed["isError"], true, "{confirmed}");
    assert_eq!(confirmed["protocolVersion"], "2026-07-28", "{confirmed}");
    assert!(
        confirmed["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("deleted"),
        "{confirmed}"
    );
    assert_ne!(first_pod(&reader, "prod-a").await, pod, "the pod is gone");

    // And by a 2025 session client (asked on the call's stream).
    let pod = first_pod(&reader, "prod-a").await;
    let legacy = with(
        &["--legacy", "--elicit-answer", r#"{"confirm": true}"#],
        delete(&pod),
    );
    assert_ne!(legacy["isError"], true, "{legacy}");
    assert_ne!(legacy["protocolVersion"], "2026-07-28", "{legacy}");
    assert_eq!(
        legacy["asked"].as_array().map(Vec::len),
        Some(1),
        "{legacy}"
    );
    assert_ne!(first_pod(&reader, "prod-a").await, pod, "the pod is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_edit_applies_live_narrows_fan_out_and_reconnects_nothing() {
    let gateway = policy_fleet("");
    let handler = TestClient::default();
    let dev = connect_as_demo(&gateway.url(), "bob", "dev", handler.clone()).await;
    let connected_at = gateway.server_status("prod-a")["status"]["lastConnected"].clone();
    assert!(connected_at.is_string(), "{connected_at}");

    let everywhere = call(&dev, "x_kubernetes_get_events", json!({"instance": "*"})).await;
    let instances = &everywhere.structured_content.clone().unwrap()["instances"];
    assert!(instances["prod-a"].is_object() && instances["dev-a"].is_object());

    gateway.write_manifest(
        "no-prod-events.yaml",
        r#"
apiVersion: flotilla.dev/v1alpha1
kind: ToolPolicy
metadata: {name: no-prod-events}
spec:
  rules:
  - name: dev-no-prod-events
    effect: deny
    match: {groups: [dev], labels: env=prod, tools: [get_events]}
"#,
    );
    eventually(Duration::from_secs(10), "dev's list to drop prod-a", || {
        let dev = &dev;
        async move {
            let tools = list_tools(dev).await;
            (instance_enum(&tools, "x_kubernetes_get_events") == ["dev-a"]).then_some(())
        }
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "the policy change announced as a tool list change",
        || {
            let changes = handler
                .tool_list_changes
                .load(std::sync::atomic::Ordering::SeqCst);
            async move { (changes > 0).then_some(()) }
        },
    )
    .await;

    let narrowed = call(&dev, "x_kubernetes_get_events", json!({"instance": "*"})).await;
    assert_ne!(narrowed.is_error, Some(true), "{}", text_of(&narrowed));
    let structured = narrowed.structured_content.clone().unwrap();
    assert!(structured["instances"]["dev-a"].is_object(), "{structured}");
    assert!(
        structured["instances"].get("prod-a").is_none(),
        "{structured}"
    );
    assert!(
        structured["excluded"]["prod-a"]
            .as_str()
            .unwrap_or_default()
            .contains("dev-no-prod-events"),
        "{structured}"
    );
    assert!(
        text_of(&narrowed).contains("excluded by policy: prod-a"),
        "{}",
        text_of(&narrowed)
    );
    // Named alone, the instance is denied with the rule.
    let alone = call(
        &dev,
        "x_kubernetes_get_events",
        json!({"instance": "prod-a"}),
    )
    .await;
    assert_eq!(alone.is_error, Some(true));
    assert!(
        text_of(&alone).contains("dev-no-prod-events"),
        "{}",
        text_of(&alone)
    );
    // sre is not in group dev: untouched.
    let sre = connect_as_demo(&gateway.url(), "alice", "sre", TestClient::default()).await;
    let tools = list_tools(&sre).await;
    assert_eq!(
        instance_enum(&tools, "x_kubernetes_get_events"),
        ["dev-a", "prod-a"]
    );

    // A broken edit keeps the last good rules, and says so.
    gateway.write_manifest("no-prod-events.yaml", "apiVersion: flotilla.dev/v1alpha1\nkind: ToolPolicy\nmetadata: {name: no-prod-events}\nspec:\n  rules:\n  - effect: deny\n    match: {labels: 'env=prod,=x'}\n");
    let report = eventually(
        Duration::from_secs(10),
        "the broken policy reported",
        || {
            let status = gateway.get_json("/status");
            async move {
                status["policies"]
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == "no-prod-events" && p["lastError"].is_string())
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(report["state"], "Active", "{report}");
    assert!(
        report["lastError"]
            .as_str()
            .unwrap()
            .contains("spec.rules[0].match.labels"),
        "{report}"
    );
    let still = call(
        &dev,
        "x_kubernetes_get_events",
        json!({"instance": "prod-a"}),
    )
    .await;
    assert_eq!(still.is_error, Some(true), "the last good deny holds");

    // Removing the policy lifts it.
    gateway.remove_manifest("no-prod-events.yaml");
    eventually(Duration::from_secs(10), "prod-a back in dev's list", || {
        let dev = &dev;
        async move {
            let tools = list_tools(dev).await;
            (instance_enum(&tools, "x_kubernetes_get_events") == ["dev-a", "prod-a"]).then_some(())
        }
    })
    .await;
    assert_eq!(
        gateway.server_status("prod-a")["status"]["lastConnected"],
        connected_at,
        "policy edits reconnect no upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn relayed_calls_follow_the_policy_too() {
    let fleet = Fleet::new();
    let (_py, py_url) = python_server(0, fleet.logs());
    let gateway = fleet
        .http("py", &py_url)
        .connected()
        .manifest(
            "policy.yaml",
            r#"
apiVersion: flotilla.dev/v1alpha1
kind: ToolPolicy
metadata: {name: py-rules}
spec:
  rules:
  - {name: no-echo, effect: deny, match: {servers: [py], tools: [echo]}}
  - {name: confirm-add, effect: confirm, match: {servers: ["p*"], tools: [add]}}
"#,
        )
        .start();
    let client = connect(&gateway.url()).await;
    let names: Vec<String> = list_tools(&client)
        .await
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(!names.contains(&"x_py_echo".to_string()), "{names:?}");
    assert!(names.contains(&"x_py_add".to_string()), "{names:?}");

    // Denied on the relay path (an HTTP upstream), naming the rule.
    let denied = call(&client, "x_py_echo", json!({"text": "hi"})).await;
    assert_eq!(denied.is_error, Some(true));
    assert!(
        text_of(&denied).contains("\"no-echo\""),
        "{}",
        text_of(&denied)
    );
    // The same for a 2026-07-28 request.
    let stateless = py_client(&gateway.url(), &["call", "x_py_echo", r#"{"text": "hi"}"#]);
    assert_eq!(stateless["isError"], true, "{stateless}");

    // `add` is unannotated, so destructive by MCP's defaults: confirmed
    // first. The test client answers every form with {"name": "Ada"}, which
    // is no confirmation.
    let unconfirmed = call(&client, "x_py_add", json!({"a": 1, "b": 2})).await;
    assert_eq!(unconfirmed.is_error, Some(true), "{unconfirmed:?}");
    assert!(
        text_of(&unconfirmed).contains("did not confirm"),
        "{}",
        text_of(&unconfirmed)
    );
    let confirmed = py_client(
        &gateway.url(),
        &[
            "--elicit-answer",
            r#"{"confirm": true}"#,
            "call",
            "x_py_add",
            r#"{"a": 1, "b": 2}"#,
        ],
    );
    assert_ne!(confirmed["isError"], true, "{confirmed}");
    assert_eq!(confirmed["content"][0]["text"], "3", "{confirmed}");
}

#[test]
fn flotilla_validate_checks_policies() {
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "good.yaml", PROD_GUARD);
    write_manifest(
        dir.path(),
        "bad.yaml",
        "apiVersion: flotilla.dev/v1alpha1\nkind: ToolPolicy\nmetadata: {name: bad}\nspec:\n  rules:\n  - effect: forbid\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok\tgood.yaml#0\tToolPolicy prod-guard (2 rules)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("invalid\tbad.yaml#0: spec.rules[0].effect: unknown variant `forbid`"),
        "{stdout}"
    );
}

#[test]
fn demo_identity_is_refused_with_auth() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        "auth:\n  oidc: {issuer: 'http://127.0.0.1:1', clientId: x}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "serve",
            "--port",
            "0",
            "--insecure-demo-identity",
            "--manifests",
        ])
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot be combined"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_example_works_as_its_readme_says() {
    let example = repo().join("examples/policy");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("validate")
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let logs = tempfile::tempdir().unwrap();
    let gateway =
        crate::common::Gateway::start_with(&example, logs.path(), &["--insecure-demo-identity"]);
    for server in [
        "cluster-a-mcp-kubernetes",
        "cluster-b-mcp-kubernetes",
        "cluster-c-mcp-kubernetes",
    ] {
        gateway.wait_state(server, "Connected", Duration::from_secs(20));
    }
    let enum_of = |tools: &[Tool]| {
        let schema = Value::Object(
            (*tools
                .iter()
                .find(|t| t.name == "x_kubernetes_delete_pod")
                .unwrap()
                .input_schema)
                .clone(),
        );
        schema["properties"]["management_cluster"]["anyOf"][0]["enum"].clone()
    };
    let anonymous = connect(&gateway.url()).await;
    assert_eq!(enum_of(&list_tools(&anonymous).await), json!(["cluster-c"]));
    let sre = connect_as_demo(&gateway.url(), "alice", "sre", TestClient::default()).await;
    assert_eq!(
        enum_of(&list_tools(&sre).await),
        json!(["cluster-a", "cluster-b", "cluster-c"])
    );
    let denied = call(
        &anonymous,
        "x_kubernetes_delete_pod",
        json!({"management_cluster": "prod-eu", "namespace": "web", "pod": "x"}),
    )
    .await;
    assert!(
        text_of(&denied).contains("prod-read-only"),
        "{}",
        text_of(&denied)
    );
}

/// A simulated, writable family member for the SSO world's manifest directory.
fn writable_sim(name: &str, env: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {name}\n  labels: {{env: {env}}}\nspec:\n  type: stdio\n  command: {}\n  args: [sim-cluster, --cluster, {name}, --writable]\n  timeout: 10\n  family: {{name: kubernetes}}\n",
        env!("CARGO_BIN_EXE_flotilla")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_sso_the_logins_groups_decide_what_each_user_sees_and_calls() {
    use crate::common::idp::gateway_login;
    use crate::common::sso_world::{Options, World, connect_as};

    let world = World::start(Options {
        groups: &["sre-alice=sre,oncall", "dev-bob=dev"],
        ..Default::default()
    });
    let dir = world.manifests.path();
    write_manifest(dir, "prod-a.yaml", &writable_sim("prod-a", "prod"));
    write_manifest(dir, "dev-a.yaml", &writable_sim("dev-a", "dev"));
    write_manifest(
        dir,
        "policy.yaml",
        &format!(
            "{PROD_GUARD}---\napiVersion: flotilla.dev/v1alpha1\nkind: ToolPolicy\nmetadata: {{name: plain-for-sre}}\nspec:\n  rules:\n  - name: plain-is-sre-only\n    effect: deny\n    match: {{servers: [plain]}}\n    except: {{groups: [sre]}}\n"
        ),
    );
    let base = world.base();
    let sre = connect_as(
        &world.gateway.url(),
        &gateway_login(&base, "sre-alice").access_token,
    )
    .await;
    let dev = connect_as(
        &world.gateway.url(),
        &gateway_login(&base, "dev-bob").access_token,
    )
    .await;
    // (/status needs a login here: wait for both clusters in sre's list.)
    let sre_tools = eventually(Duration::from_secs(20), "both clusters listed", || {
        let sre = &sre;
        async move {
            let tools = list_tools(sre).await;
            let both = tools.iter().any(|t| t.name == "x_kubernetes_delete_pod")
                && instance_enum(&tools, "x_kubernetes_delete_pod").len() == 2;
            both.then_some(tools)
        }
    })
    .await;
    let dev_tools = list_tools(&dev).await;
    assert_eq!(
        instance_enum(&sre_tools, "x_kubernetes_delete_pod"),
        ["dev-a", "prod-a"]
    );
    assert_eq!(
        instance_enum(&dev_tools, "x_kubernetes_delete_pod"),
        ["dev-a"]
    );
    let has = |tools: &[Tool], name: &str| tools.iter().any(|t| t.name == name);
    assert!(has(&sre_tools, "x_plain_echo"), "sre sees the plain server");
    assert!(!has(&dev_tools, "x_plain_echo"), "dev does not");
    // SSO servers are unaffected by these rules for both.
    assert!(has(&dev_tools, "x_cluster-a-echo_auth_header"));

    let (namespace, pod) = first_pod(&dev, "prod-a").await;
    let denied = delete_pod(&dev, "prod-a", (&namespace, &pod)).await;
    assert_eq!(denied.is_error, Some(true));
    assert!(
        text_of(&denied).contains("prod-read-only"),
        "{}",
        text_of(&denied)
    );
    let plain = call(&dev, "x_plain_echo", json!({"text": "hi"})).await;
    assert!(
        text_of(&plain).contains("plain-is-sre-only"),
        "{}",
        text_of(&plain)
    );
    // sre's destructive prod call asks this client, which answers every
    // form with {"name": "Ada"}: no confirmation, not run.
    let unconfirmed = delete_pod(&sre, "prod-a", (&namespace, &pod)).await;
    assert!(
        text_of(&unconfirmed).contains("did not confirm"),
        "{}",
        text_of(&unconfirmed)
    );
    assert_eq!(
        first_pod(&sre, "prod-a").await,
        (namespace.clone(), pod.clone())
    );
    // The Python SDK client, logged in through the gateway as sre-alice
    // (its own OAuth flow), confirms: the pod is deleted.
    let args = json!({"instance": "prod-a", "namespace": namespace, "pod": pod}).to_string();
    let url = world.gateway.url();
    let run = tokio::task::block_in_place(|| {
        crate::sso_clients::authorized_run(
            &world,
            &url,
            "py-sre-confirms",
            "sre-alice",
            &[
                "--elicit-answer",
                r#"{"confirm": true}"#,
                "call",
                "x_kubernetes_delete_pod",
                &args,
            ],
        )
    });
    assert_ne!(run.output["isError"], true, "{}", run.output);
    assert!(
        run.output["asked"][0]
            .as_str()
            .unwrap_or_default()
            .contains("sre-confirms-prod"),
        "{}",
        run.output
    );
    assert_ne!(
        first_pod(&sre, "prod-a").await,
        (namespace, pod),
        "deleted once confirmed"
    );

    let line = eventually(Duration::from_secs(5), "dev's denial audited", || {
        let log = world.audit_log();
        async move {
            log.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["outcome"] == "denied" && l["caller"]["subject"] == "dev-bob")
        }
    })
    .await;
    assert_eq!(line["caller"]["groups"], json!(["dev"]), "{line}");
    assert_eq!(line["policyRule"], "prod-guard/prod-read-only", "{line}");
}

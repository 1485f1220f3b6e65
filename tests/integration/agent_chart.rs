//! The agent's Helm chart (charts/flotilla-agent), linted and rendered by
//! Helm's own engine (the same helm_render.py as the gateway's chart): the
//! agent runs with least privilege (no API token, no binding, no port, no
//! Service, non-root and read-only), its credential comes from a Secret or
//! a projected service-account token, and the servers it offers are a
//! manifest the agent's own loader accepts.

use serde_json::Value;

use crate::common::repo;
use crate::helm_chart::helm_chart;

const REQUIRED: [&str; 8] = [
    "--set",
    "gateway=https://flotilla.example.com/",
    "--set",
    "name=north",
    "--set",
    "credential.existingSecret=flotilla-agent-credential",
    "--set-json",
    r#"servers={"kubernetes":{"type":"streamable-http","url":"http://127.0.0.1:8080/mcp"}}"#,
];

fn render(extra: &[&str]) -> Vec<Value> {
    let mut args: Vec<&str> = REQUIRED.to_vec();
    args.extend(extra);
    let text = helm_chart(&repo().join("charts/flotilla-agent"), &args)
        .unwrap_or_else(|e| panic!("helm_render.py {args:?} failed:\n{e}"));
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The pod's volume named `name`.
fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume {name}: {pod}"))
}

fn deployment(docs: &[Value]) -> &Value {
    docs.iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment")
}

#[test]
fn the_agent_runs_with_least_privilege_and_listens_on_nothing() {
    let docs = render(&[]);
    assert_eq!(kinds(&docs), ["ConfigMap", "Deployment", "ServiceAccount"]);
    let pod = &deployment(&docs)["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    let container = &pod["containers"][0];
    assert!(container["ports"].is_null(), "no port: {container}");
    assert_eq!(container["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        &args[..5],
        [
            "agent",
            "--gateway",
            "https://flotilla.example.com/",
            "--name",
            "north"
        ]
    );
    let credential = volume(pod, "credential");
    assert_eq!(
        credential["secret"]["secretName"],
        "flotilla-agent-credential"
    );
    assert_eq!(deployment(&docs)["spec"]["strategy"]["type"], "Recreate");
    // The servers' manifest is one the agent's loader accepts.
    let config = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let servers = config["data"]["servers.yaml"].as_str().unwrap();
    let parsed = flotilla::source::parse_manifests("servers.yaml", servers);
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    assert_eq!(parsed.servers.len(), 1);
}

#[test]
fn a_service_account_credential_is_a_projected_token_for_the_gateways_audience() {
    let docs = render(&["--set", "credential.type=serviceAccount"]);
    let pod = &deployment(&docs)["spec"]["template"]["spec"];
    let credential = volume(pod, "credential");
    let token = &credential["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "flotilla-agent");
    assert_eq!(token["path"], "token");
    // The projected token needs no automounted API token.
    assert_eq!(pod["automountServiceAccountToken"], false);
}

#[test]
fn cluster_roles_are_bound_only_when_asked_for_servers_in_the_pod() {
    let docs = render(&["--set-json", r#"rbac.clusterRoles=["view"]"#]);
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .expect("a binding");
    assert_eq!(binding["roleRef"]["name"], "view");
    assert_eq!(binding["subjects"][0]["name"], "flotilla-flotilla-agent");
    let pod = &deployment(&docs)["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert!(!kinds(&render(&[])).contains(&"ClusterRoleBinding".to_string()));
}

#[test]
fn missing_required_values_fail_with_a_message_that_names_them() {
    let chart = repo().join("charts/flotilla-agent");
    let error = helm_chart(&chart, &[]).expect_err("gateway is required");
    assert!(error.contains("gateway is required"), "{error}");
    let no_secret = helm_chart(&chart, &REQUIRED[..4]).expect_err("a credential is required");
    assert!(
        no_secret.contains("credential.existingSecret is required"),
        "{no_secret}"
    );
    let typo = helm_chart(
        &chart,
        &[&REQUIRED[..], &["--set", "credential.type=token"]].concat(),
    )
    .expect_err("an unknown credential type");
    assert!(typo.contains("credential"), "{typo}");
}

#[test]
fn the_gateways_default_ingress_routes_the_agent_door_beside_mcp() {
    let text = helm_chart(
        &repo().join("charts/flotilla"),
        &["--set", "ingress.enabled=true"],
    )
    .expect("renders");
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("YAML");
    let ingress = docs.iter().find(|d| d["kind"] == "Ingress").unwrap();
    let paths: Vec<(String, String)> = ingress["spec"]["rules"][0]["http"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_string(),
                p["pathType"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            ("/mcp".to_string(), "Prefix".to_string()),
            ("/agent/connect".to_string(), "Exact".to_string())
        ]
    );
}

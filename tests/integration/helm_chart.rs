//! The Helm chart in charts/flotilla, linted and rendered by a real Helm
//! engine: Helm v4's Go SDK, loaded in-process by the PyPI package
//! helm-python-sdk (pinned in tests/peers/requirements.txt) through
//! tests/peers/helm_render.py (`helm lint --strict` + schema validation +
//! `helm template`, manifests as YAML on stdout). Each test renders with its
//! own `--set` values and asserts on the parsed manifests; nothing is shared
//! but the read-only chart, so the tests run in parallel.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::common::{peers, repo};

use serde_json::Value;

fn chart() -> PathBuf {
    repo().join("charts/flotilla")
}

/// Runs helm_render.py on the chart; Ok(stdout) or Err(stderr).
fn helm(args: &[&str]) -> Result<String, String> {
    helm_chart(&chart(), args)
}

/// Runs helm_render.py on the chart at `chart`; Ok(stdout) or Err(stderr).
pub(crate) fn helm_chart(chart: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(peers().get("PY"))
        .arg(peers().get("HELM_RENDER"))
        .arg(chart)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running helm_render.py");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

/// The rendered manifests (release "flotilla" in namespace "flotilla" unless
/// `args` say otherwise); panics with Helm's error if lint or render fails.
fn render(args: &[&str]) -> Manifests {
    let text = helm(args).unwrap_or_else(|e| panic!("helm_render.py {args:?} failed:\n{e}"));
    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple(&text).expect("rendered manifests are YAML");
    let docs = docs
        .into_iter()
        .filter(|v| !v.is_null())
        .collect::<Vec<_>>();
    assert!(!docs.is_empty(), "nothing rendered for {args:?}");
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "not an object: {d:?}"
        );
        assert!(d["metadata"]["name"].is_string(), "unnamed object: {d:?}");
    }
    Manifests(docs)
}

struct Manifests(Vec<Value>);

impl Manifests {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.of_kind(kind);
        assert_eq!(
            all.len(),
            1,
            "expected exactly one {kind}, got {}",
            all.len()
        );
        all[0]
    }

    fn deployment(&self) -> &Value {
        self.one("Deployment")
    }

    /// The Service clients reach (not the replicas' headless `-peers` one).
    fn service(&self) -> &Value {
        let main: Vec<&Value> = self
            .of_kind("Service")
            .into_iter()
            .filter(|s| !str_of(&s["metadata"]["name"]).ends_with("-peers"))
            .collect();
        assert_eq!(main.len(), 1, "expected one client-facing Service");
        main[0]
    }

    fn container(&self) -> &Value {
        let containers = self.deployment()["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    fn args(&self) -> Vec<String> {
        strings(&self.container()["args"])
    }

    /// The pod template's annotations.
    fn pod_annotations(&self) -> &Value {
        &self.deployment()["spec"]["template"]["metadata"]["annotations"]
    }

    /// The pod's volume named `name`, if any.
    fn volume(&self, name: &str) -> Option<&Value> {
        self.deployment()["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name)
    }

    /// The container's mount of volume `name`, if any.
    fn mount(&self, name: &str) -> Option<&Value> {
        self.container()["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|v| v["name"] == name)
    }

    /// The gateway's config file from the ConfigMap, parsed by the binary's
    /// own parser (it denies unknown keys).
    fn config_file(&self) -> flotilla::config::ConfigFile {
        let text = str_of(&self.one("ConfigMap")["data"]["config.yaml"]);
        serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("flotilla rejects the chart's config.yaml: {e}\n{text}"))
    }

    /// (namespace, rules) of every Role/ClusterRole granting `resource`.
    fn grants(&self, kind: &str, group: &str, resource: &str) -> Vec<(String, Vec<String>)> {
        self.of_kind(kind)
            .into_iter()
            .flat_map(|role| {
                let ns = str_of(&role["metadata"]["namespace"]);
                rules(role)
                    .into_iter()
                    .filter(|r| {
                        (r.groups.contains(group) || r.groups.contains("*"))
                            && (r.resources.contains(resource) || r.resources.contains("*"))
                    })
                    .map(move |r| (ns.clone(), r.verbs.into_iter().collect()))
            })
            .collect()
    }

    /// The subjects bound by the binding of `kind` named like `role`.
    fn bound_subjects(&self, binding_kind: &str, role: &Value) -> Vec<Value> {
        let name = &role["metadata"]["name"];
        let ns = &role["metadata"]["namespace"];
        let bindings: Vec<_> = self
            .of_kind(binding_kind)
            .into_iter()
            .filter(|b| b["roleRef"]["name"] == *name && b["metadata"]["namespace"] == *ns)
            .collect();
        assert_eq!(
            bindings.len(),
            1,
            "one {binding_kind} for {name:?} in {ns:?}"
        );
        assert_eq!(bindings[0]["roleRef"]["kind"], role["kind"]);
        bindings[0]["subjects"]
            .as_array()
            .expect("subjects")
            .clone()
    }
}

struct Rule {
    groups: BTreeSet<String>,
    resources: BTreeSet<String>,
    verbs: BTreeSet<String>,
}

fn rules(role: &Value) -> Vec<Rule> {
    role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| Rule {
            groups: strings(&r["apiGroups"]).into_iter().collect(),
            resources: strings(&r["resources"]).into_iter().collect(),
            verbs: strings(&r["verbs"]).into_iter().collect(),
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|s| s.iter().map(str_of).collect())
        .unwrap_or_default()
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn set(words: &[&str]) -> BTreeSet<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn the_service_account(ns: &str) -> Value {
    serde_saphyr::from_str(&format!(
        "{{kind: ServiceAccount, name: flotilla, namespace: {ns}}}"
    ))
    .unwrap()
}

#[test]
fn the_chart_passes_helm_lint_strict_with_defaults_and_with_every_feature_on() {
    helm(&["--lint-only"]).unwrap_or_else(|e| panic!("lint (defaults):\n{e}"));
    helm(&[
        "--lint-only",
        "--set",
        "ingress.enabled=true,replicas=3",
        "--set",
        "watchNamespaces={team-a,team-b},secretNamespaces={team-a}",
        "--set",
        "config.publicUrl=https://mcp.example.com,config.allowedHosts={mcp.example.com}",
        "--set",
        "podDisruptionBudget.maxUnavailable=1",
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.namespace=monitoring,metrics.serviceMonitor.labels.release=prometheus",
        "--set",
        "tracing.otlpEndpoint=http://otel-collector.observability:4318,tracing.sampleRatio=0.5",
        "--set",
        "audit.file=/var/log/flotilla/audit.log,audit.includeArguments=true,audit.persistence.existingClaim=flotilla-audit",
        "--set",
        "config.limits.maxSessions=5000,config.limits.maxConnectionsPerIp=0",
        "--set",
        "config.rateLimit.callsPerMinute=600,config.rateLimit.burst=60",
    ])
    .unwrap_or_else(|e| panic!("lint (all features):\n{e}"));
    helm(&[
        "--lint-only",
        "--set",
        "metrics.annotations.enabled=false,metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.interval=,metrics.serviceMonitor.scrapeTimeout=",
        "--set",
        "audit.enabled=false,audit.file=/var/log/flotilla/audit.log,audit.persistence.sizeLimit=1Gi",
    ])
    .unwrap_or_else(|e| panic!("lint (metrics and audit variants):\n{e}"));
}

#[test]
fn the_deployment_runs_non_root_read_only_with_probes_on_healthz_and_readyz() {
    let m = render(&[]);
    let pod = &m.deployment()["spec"]["template"]["spec"];
    let c = m.container();

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"]["add"].is_null(), "no capability added");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");

    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    // The API token is mounted into this pod only: the ServiceAccount opts out.
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(pod["serviceAccountName"], "flotilla");
    assert_eq!(pod["enableServiceLinks"], false);
    let sa = m.one("ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "flotilla");
    assert_eq!(sa["automountServiceAccountToken"], false);

    // Exactly the command line the binary implements; no --namespace = all.
    assert_eq!(
        m.args(),
        [
            "serve",
            "--kubernetes",
            "--bind",
            "0.0.0.0",
            "--port",
            "8080",
            "--config",
            "/etc/flotilla/config.yaml"
        ]
    );
    let env = c["env"].as_array().expect("env");
    let field = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| str_of(&e["valueFrom"]["fieldRef"]["fieldPath"]))
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(field("POD_NAME"), "metadata.name");
    assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");

    // /etc/flotilla/config.yaml comes from the chart's ConfigMap.
    let cm = m.one("ConfigMap");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["mountPath"] == "/etc/flotilla")
        .expect("config mount");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("config volume");
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
    assert!(cm["data"]["config.yaml"].is_string());

    // The Service selects these pods on the named port.
    let svc = m.service();
    let labels = &m.deployment()["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&labels[k], v, "selector {k:?}");
    }
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
}

#[test]
fn the_config_map_holds_a_config_file_the_gateway_accepts() {
    let m = render(&[
        "--set",
        "config.allowedHosts={mcp.example.com,flotilla.flotilla.svc}",
        "--set",
        "config.pingIntervalSeconds=7,config.fanOut.maxConcurrency=4",
        "--set",
        "config.fanOut.outputBudgetBytes=2048,config.fanOut.allowDestructive=true",
        "--set",
        "ingress.enabled=true",
    ]);
    let text = str_of(&m.one("ConfigMap")["data"]["config.yaml"]);
    // The binary's own parser (it denies unknown keys).
    let parsed: flotilla::config::ConfigFile = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("flotilla rejects the chart's config.yaml: {e}\n{text}"));
    assert_eq!(parsed.public_url.as_deref(), Some("http://mcp.example.com"));
    assert_eq!(
        parsed.allowed_hosts,
        Some(vec![
            "mcp.example.com".into(),
            "flotilla.flotilla.svc".into()
        ])
    );
    assert_eq!(parsed.ping_interval_seconds, Some(7));
    let fan_out = parsed.fan_out.expect("fanOut");
    assert_eq!(fan_out.max_concurrency, Some(4));
    assert_eq!(fan_out.output_budget_bytes, Some(2048));
    assert_eq!(fan_out.allow_destructive, Some(true));
    assert!(parsed.bind_address.is_none() && parsed.port.is_none() && parsed.manifests.is_none());

    // Defaults parse too, with no publicUrl and no allowedHosts.
    let defaults = render(&[]);
    let text = str_of(&defaults.one("ConfigMap")["data"]["config.yaml"]);
    let parsed: flotilla::config::ConfigFile = serde_saphyr::from_str(&text).expect("defaults");
    assert!(parsed.public_url.is_none() && parsed.allowed_hosts.is_none());
    assert_eq!(
        parsed.fan_out.expect("fanOut").allow_destructive,
        Some(false)
    );
}

#[test]
fn sso_mounts_the_auth_secret_and_configures_the_gateway_to_read_it() {
    let m = render(&[
        "--set",
        "auth.enabled=true,auth.oidc.issuer=https://dex.example.com,auth.existingSecret=flotilla-auth",
        "--set",
        "auth.trustedIssuers[0].issuer=https://kubernetes.default.svc,auth.trustedIssuers[0].audiences={flotilla}",
        "--set",
        "auth.userSessions.idleSeconds=600",
    ]);
    let text = str_of(&m.one("ConfigMap")["data"]["config.yaml"]);
    let parsed: flotilla::config::ConfigFile = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("flotilla rejects the chart's config.yaml: {e}\n{text}"));
    let auth = parsed.auth.expect("auth section");
    let oidc = auth.oidc.expect("oidc");
    assert_eq!(oidc.issuer, "https://dex.example.com");
    assert_eq!(oidc.client_id, "flotilla");
    let mount = "/etc/flotilla-auth";
    assert_eq!(
        oidc.client_secret_file.as_deref(),
        Some(std::path::Path::new(&format!("{mount}/oidc-client-secret")))
    );
    assert_eq!(
        auth.sealing_key_file.as_deref(),
        Some(std::path::Path::new(&format!("{mount}/sealing-keys")))
    );
    assert_eq!(
        auth.trusted_issuers[0].audiences,
        vec!["flotilla".to_string()]
    );
    assert_eq!(auth.user_sessions.and_then(|u| u.idle_seconds), Some(600));
    let pod = &m.deployment()["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "auth")
        .expect("auth volume");
    assert_eq!(volume["secret"]["secretName"], "flotilla-auth");
    let mounted = m.container()["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "auth" && v["mountPath"] == mount && v["readOnly"] == true);
    assert!(mounted, "{:?}", m.container());
    // Off by default: no auth section, no Secret mounted.
    let defaults = render(&[]);
    let text = str_of(&defaults.one("ConfigMap")["data"]["config.yaml"]);
    assert!(!text.contains("auth"), "{text}");
    // On without an issuer or Secret: the schema says what is missing.
    let error = helm(&["--no-lint", "--set", "auth.enabled=true"])
        .err()
        .unwrap_or_default();
    assert!(
        error.contains("existingSecret") || error.contains("issuer"),
        "{error}"
    );
}

#[test]
fn limits_reach_the_config_file_only_when_set() {
    assert!(
        render(&[]).config_file().limits.is_none(),
        "defaults: the gateway's own"
    );
    let m = render(&[
        "--set",
        "config.limits.maxSessions=5000,config.limits.maxConnectionsPerIp=0,config.limits.bodyReadTimeoutSeconds=60",
    ]);
    let limits = m.config_file().limits.expect("limits section");
    assert_eq!(limits.max_sessions, Some(5000));
    assert_eq!(limits.max_connections_per_ip, Some(0));
    assert_eq!(limits.body_read_timeout_seconds, Some(60));
    assert_eq!(limits.max_connections, None);
    // An unknown key or a nonsense value is refused by the schema.
    assert!(helm(&["--set", "config.limits.maxSesions=1"]).is_err());
    assert!(helm(&["--set", "config.limits.maxSessions=0"]).is_err());
}

#[test]
fn the_rate_limit_reaches_the_config_file_only_when_set() {
    assert!(
        render(&[]).config_file().rate_limit.is_none(),
        "default: off"
    );
    let m = render(&[
        "--set",
        "config.rateLimit.callsPerMinute=600,config.rateLimit.burst=60",
    ]);
    let rate = m.config_file().rate_limit.expect("rateLimit section");
    assert_eq!(rate.calls_per_minute, Some(600));
    assert_eq!(rate.burst, Some(60));
    // An unknown key, a zero rate, or a burst without a rate is refused by the schema.
    assert!(helm(&["--set", "config.rateLimit.callsPerMinit=1"]).is_err());
    assert!(helm(&["--set", "config.rateLimit.callsPerMinute=0"]).is_err());
    assert!(helm(&["--set", "config.rateLimit.burst=5"]).is_err());
}

#[test]
fn tracing_and_audit_values_reach_the_config_file_the_gateway_accepts() {
    let m = render(&[
        "--set",
        "tracing.otlpEndpoint=http://otel-collector.observability:4318,tracing.serviceName=flotilla-prod",
        "--set",
        "tracing.sampleRatio=0.25",
        "--set",
        "audit.enabled=false,audit.includeArguments=true,audit.file=/var/log/flotilla/audit.log,audit.maxFileMib=20,audit.maxFiles=3",
    ]);
    let parsed = m.config_file();
    let tracing = parsed.tracing.expect("tracing section");
    assert_eq!(
        tracing.otlp_endpoint.as_deref(),
        Some("http://otel-collector.observability:4318")
    );
    assert_eq!(tracing.service_name.as_deref(), Some("flotilla-prod"));
    assert_eq!(tracing.sample_ratio, Some(0.25));
    // The gateway's own checks (URL scheme, ratio range) accept it.
    let settings = tracing
        .resolve()
        .expect("the gateway accepts the tracing section")
        .expect("export on");
    assert_eq!(settings.sample_ratio, 0.25);
    let audit = parsed.audit.expect("audit section");
    assert_eq!(audit.enabled, Some(false));
    assert_eq!(audit.include_arguments, Some(true));
    assert_eq!(
        audit.file.as_deref(),
        Some(std::path::Path::new("/var/log/flotilla/audit.log"))
    );
    assert_eq!(audit.max_file_mib, Some(20));
    assert_eq!(audit.max_files, Some(3));

    // Defaults: no tracing section (export off), audit on to stdout.
    let parsed = render(&[]).config_file();
    assert!(parsed.tracing.is_none());
    let audit = parsed.audit.expect("audit section");
    assert_eq!(audit.enabled, Some(true));
    assert_eq!(audit.include_arguments, Some(false));
    assert!(audit.file.is_none());

    // An endpoint alone: the default name and ratio (1.0, which Helm writes as 1).
    let parsed = render(&["--set", "tracing.otlpEndpoint=https://otel.example.com"]).config_file();
    let settings = parsed
        .tracing
        .expect("tracing section")
        .resolve()
        .expect("accepted")
        .expect("export on");
    assert_eq!(settings.service_name, "flotilla");
    assert_eq!(settings.sample_ratio, 1.0);
}

#[test]
fn an_audit_file_gets_a_writable_volume_at_its_directory() {
    let defaults = render(&[]);
    assert!(defaults.volume("audit").is_none() && defaults.mount("audit").is_none());

    // emptyDir by default (the root filesystem is read-only).
    let m = render(&["--set", "audit.file=/var/log/flotilla/audit.log"]);
    assert_eq!(
        m.container()["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    let mount = m.mount("audit").expect("audit mount");
    assert_eq!(mount["mountPath"], "/var/log/flotilla");
    assert!(
        mount["readOnly"].is_null() || mount["readOnly"] == false,
        "{mount:?}"
    );
    let volume = m.volume("audit").expect("audit volume");
    assert!(volume["emptyDir"].is_object(), "{volume:?}");
    assert!(volume["emptyDir"]["sizeLimit"].is_null());
    let paths: Vec<_> = m.container()["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| str_of(&v["mountPath"]))
        .collect();
    assert_eq!(
        paths.iter().collect::<BTreeSet<_>>().len(),
        paths.len(),
        "{paths:?}"
    );
    let sized = render(&[
        "--set",
        "audit.file=/var/log/flotilla/audit.log,audit.persistence.sizeLimit=1Gi",
    ]);
    assert_eq!(
        sized.volume("audit").unwrap()["emptyDir"]["sizeLimit"],
        "1Gi"
    );

    // An existing claim instead.
    let m = render(&[
        "--set",
        "audit.file=/audit/calls.jsonl,audit.persistence.existingClaim=flotilla-audit",
    ]);
    let volume = m.volume("audit").expect("audit volume");
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"],
        "flotilla-audit"
    );
    assert!(volume["emptyDir"].is_null());
    assert_eq!(
        m.mount("audit").expect("audit mount")["mountPath"],
        "/audit"
    );

    // A directory that would hide the chart's mounts or the image's files
    // (here /tmp, the config, the binary) is refused, with the reason.
    for file in [
        "/tmp/audit.log",
        "/etc/flotilla/audit.log",
        "/usr/local/bin/audit.log",
    ] {
        let error = helm(&["--set", &format!("audit.file={file}")])
            .err()
            .unwrap_or_else(|| panic!("audit.file={file} accepted"));
        assert!(error.contains("audit.file"), "{error}");
    }
}

#[test]
fn pods_carry_prometheus_scrape_annotations_unless_disabled() {
    let m = render(&[]);
    let ann = m.pod_annotations();
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    // The container port that serves /metrics (the same as /mcp).
    let port = &m.container()["ports"][0];
    assert_eq!(port["name"], "http");
    assert_eq!(ann["prometheus.io/port"], str_of(&port["containerPort"]));
    assert!(ann["checksum/config"].is_string());

    let moved = render(&["--set", "port=9090"]);
    assert_eq!(moved.pod_annotations()["prometheus.io/port"], "9090");

    let off = render(&["--set", "metrics.annotations.enabled=false"]);
    let ann = off.pod_annotations();
    for key in [
        "prometheus.io/scrape",
        "prometheus.io/port",
        "prometheus.io/path",
    ] {
        assert!(
            ann[key].is_null(),
            "{key} with annotations disabled: {ann:?}"
        );
    }
    assert!(ann["checksum/config"].is_string());

    // podAnnotations win key by key, without duplicate keys.
    let over = render(&[
        "--set-string",
        "podAnnotations.prometheus\\.io/scrape=false,podAnnotations.team=mcp",
    ]);
    let ann = over.pod_annotations();
    assert_eq!(ann["prometheus.io/scrape"], "false");
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    assert_eq!(ann["team"], "mcp");
}

#[test]
fn the_service_monitor_is_absent_by_default_and_scrapes_the_services_http_port_when_enabled() {
    assert!(render(&[]).of_kind("ServiceMonitor").is_empty());

    let m = render(&[
        "--namespace",
        "ops",
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prometheus",
        "--set",
        "metrics.serviceMonitor.interval=15s,metrics.serviceMonitor.scrapeTimeout=5s",
    ]);
    let sm = m.one("ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["namespace"], "ops");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        sm["metadata"]["labels"]["app.kubernetes.io/name"],
        "flotilla"
    );
    assert_eq!(
        strings(&sm["spec"]["namespaceSelector"]["matchNames"]),
        ["ops"]
    );

    // It selects the chart's Service (and only by labels that Service has)...
    let svc = m.service();
    let matches = sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(!matches.is_empty());
    for (k, v) in matches {
        assert_eq!(&svc["metadata"]["labels"][k], v, "selector {k:?}");
    }
    // ...on a port name the Service has, which leads to the container's port.
    let endpoints = sm["spec"]["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    let ep = &endpoints[0];
    let port = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == ep["port"])
        .unwrap_or_else(|| panic!("the Service has no port named {:?}", ep["port"]));
    assert_eq!(port["targetPort"], m.container()["ports"][0]["name"]);
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(ep["honorLabels"], false);
    assert_eq!(ep["interval"], "15s");
    assert_eq!(ep["scrapeTimeout"], "5s");

    // In another namespace, it still looks for the Service in the release's.
    let elsewhere = render(&[
        "--namespace",
        "ops",
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.namespace=monitoring",
        "--set",
        "metrics.serviceMonitor.interval=,metrics.serviceMonitor.scrapeTimeout=",
    ]);
    let sm = elsewhere.one("ServiceMonitor");
    assert_eq!(sm["metadata"]["namespace"], "monitoring");
    assert_eq!(
        strings(&sm["spec"]["namespaceSelector"]["matchNames"]),
        ["ops"]
    );
    // Empty interval and timeout: Prometheus' own defaults.
    let ep = &sm["spec"]["endpoints"][0];
    assert!(
        ep["interval"].is_null() && ep["scrapeTimeout"].is_null(),
        "{ep:?}"
    );
}

#[test]
fn watching_all_namespaces_uses_one_cluster_role_for_mcpservers_status_and_events() {
    let m = render(&[]);
    let roles = m.of_kind("ClusterRole");
    assert_eq!(roles.len(), 1);
    let role = roles[0];
    let by = |group: &str, resource: &str| {
        rules(role)
            .into_iter()
            .filter(|r| r.groups.contains(group) && r.resources.contains(resource))
            .flat_map(|r| r.verbs)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        by("flotilla.dev", "mcpservers"),
        set(&["get", "list", "watch"])
    );
    assert_eq!(
        by("flotilla.dev", "mcpservers/status"),
        set(&["get", "patch", "update"])
    );
    assert_eq!(
        by("flotilla.dev", "toolpolicies"),
        set(&["get", "list", "watch"])
    );
    assert_eq!(
        by("flotilla.dev", "toolpolicies/status"),
        set(&["get", "patch", "update"])
    );
    assert_eq!(
        by("flotilla.dev", "mcpserversets"),
        set(&["get", "list", "watch"])
    );
    assert_eq!(
        by("flotilla.dev", "mcpserversets/status"),
        set(&["get", "patch", "update"])
    );
    assert_eq!(by("events.k8s.io", "events"), set(&["create", "patch"]));
    assert_eq!(by("", "events"), set(&["create", "patch"]));
    assert_eq!(rules(role).len(), 4, "nothing else cluster-wide");
    assert_eq!(
        m.bound_subjects("ClusterRoleBinding", role),
        [the_service_account("flotilla")]
    );
    assert!(
        m.of_kind("Role")
            .iter()
            .all(|r| !str_of(&r["metadata"]["name"]).ends_with("-mcpservers"))
    );
}

#[test]
fn reading_managed_clusters_is_one_opt_in_cluster_role_even_with_watch_namespaces() {
    let off = render(&["--set", "watchNamespaces={team-a}"]);
    assert!(off.of_kind("ClusterRole").is_empty());
    let on = render(&[
        "--set",
        "watchNamespaces={team-a}",
        "--set",
        "discovery.managedClusters=true",
    ]);
    let roles = on.of_kind("ClusterRole");
    assert_eq!(
        roles.len(),
        1,
        "only the ManagedCluster reader is cluster-wide"
    );
    let granted: Vec<_> = rules(roles[0])
        .into_iter()
        .filter(|r| {
            r.groups.contains("cluster.open-cluster-management.io")
                && r.resources.contains("managedclusters")
        })
        .flat_map(|r| r.verbs)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(granted, ["get", "list", "watch"]);
    assert_eq!(rules(roles[0]).len(), 1, "nothing else");
    assert_eq!(
        on.bound_subjects("ClusterRoleBinding", roles[0]),
        [the_service_account("flotilla")]
    );
}

#[test]
fn watch_namespaces_become_namespace_flags_and_roles_with_nothing_cluster_wide() {
    let m = render(&[
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--namespace",
        "ops",
    ]);
    let args = m.args();
    let flags: Vec<_> = args
        .windows(2)
        .filter(|w| w[0] == "--namespace")
        .map(|w| w[1].as_str())
        .collect();
    assert_eq!(flags, ["team-a", "team-b"]);
    assert!(m.of_kind("ClusterRole").is_empty() && m.of_kind("ClusterRoleBinding").is_empty());
    let status: BTreeSet<_> = m
        .grants("Role", "flotilla.dev", "mcpservers/status")
        .into_iter()
        .map(|(ns, _)| ns)
        .collect();
    assert_eq!(status, set(&["team-a", "team-b"]));
    let policies: BTreeSet<_> = m
        .grants("Role", "flotilla.dev", "toolpolicies")
        .into_iter()
        .map(|(ns, _)| ns)
        .collect();
    assert_eq!(policies, set(&["team-a", "team-b"]));
    let events: BTreeSet<_> = m
        .grants("Role", "events.k8s.io", "events")
        .into_iter()
        .map(|(ns, _)| ns)
        .collect();
    assert_eq!(events, set(&["team-a", "team-b"]));
    for role in m.of_kind("Role") {
        if str_of(&role["metadata"]["name"]).ends_with("-mcpservers") {
            assert_eq!(
                m.bound_subjects("RoleBinding", role),
                [the_service_account("ops")]
            );
        }
    }
}

#[test]
fn no_cluster_role_ever_grants_secrets() {
    for args in [
        &[][..],
        &["--set", "secretNamespaces={team-a,team-b}"][..],
        &[
            "--set",
            "secretNamespaces={team-a},watchNamespaces={team-a}",
        ][..],
    ] {
        let m = render(args);
        for role in m.of_kind("ClusterRole") {
            for r in rules(role) {
                assert!(
                    !r.resources.contains("secrets") && !r.resources.contains("*"),
                    "ClusterRole grants {:?} with {args:?}",
                    r.resources
                );
                assert!(!r.verbs.contains("*"), "wildcard verbs with {args:?}");
            }
        }
    }
}

#[test]
fn secret_roles_exist_exactly_in_the_secret_namespaces() {
    let none = render(&[]);
    assert!(
        none.grants("Role", "", "secrets").is_empty(),
        "no Secret access by default"
    );

    let m = render(&[
        "--set",
        "secretNamespaces={team-a,team-b}",
        "--set",
        "watchNamespaces={team-a,team-c}",
        "--namespace",
        "ops",
    ]);
    let grants = m.grants("Role", "", "secrets");
    let namespaces: Vec<_> = grants.iter().map(|(ns, _)| ns.as_str()).collect();
    assert_eq!(
        namespaces,
        ["team-a", "team-b"],
        "one Secret Role per listed namespace"
    );
    // The gateway reads Secrets exactly where it is allowed to.
    let args = m.args();
    let secret_flags: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--secret-namespace")
        .map(|w| w[1].as_str())
        .collect();
    assert_eq!(secret_flags, ["team-a", "team-b"]);
    for (_, verbs) in &grants {
        assert_eq!(
            verbs.iter().cloned().collect::<BTreeSet<_>>(),
            set(&["get", "list", "watch"])
        );
    }
    for role in m.of_kind("Role") {
        if rules(role).iter().any(|r| r.resources.contains("secrets")) {
            assert_eq!(rules(role).len(), 1, "the Secret Role grants nothing else");
            assert_eq!(
                m.bound_subjects("RoleBinding", role),
                [the_service_account("ops")]
            );
        }
    }
}

#[test]
fn the_lease_role_lives_in_the_release_namespace() {
    let m = render(&[
        "--namespace",
        "platform-mcp",
        "--set",
        "watchNamespaces={team-a}",
    ]);
    let grants = m.grants("Role", "coordination.k8s.io", "leases");
    assert_eq!(grants.len(), 1, "{grants:?}");
    let (ns, verbs) = &grants[0];
    assert_eq!(ns, "platform-mcp");
    assert_eq!(
        verbs.iter().cloned().collect::<BTreeSet<_>>(),
        set(&["get", "create", "update"])
    );
    let role = m
        .of_kind("Role")
        .into_iter()
        .find(|r| rules(r).iter().any(|r| r.resources.contains("leases")))
        .unwrap();
    assert_eq!(
        m.bound_subjects("RoleBinding", role),
        [the_service_account("platform-mcp")]
    );
    assert!(
        m.grants("ClusterRole", "coordination.k8s.io", "leases")
            .is_empty()
    );
    // Everything namespaced that is not a per-namespace Role lives in the release namespace.
    for d in &m.0 {
        let kind = str_of(&d["kind"]);
        if !["Role", "RoleBinding"].contains(&kind.as_str()) {
            assert_eq!(d["metadata"]["namespace"], "platform-mcp", "{kind}");
        }
    }
}

#[test]
fn the_ingress_is_absent_by_default_and_routes_mcp_when_enabled() {
    assert!(render(&[]).of_kind("Ingress").is_empty());

    let m = render(&[
        "--set",
        "ingress.enabled=true,ingress.hosts[0].host=mcp.corp.example,ingress.hosts[0].paths[0].path=/mcp,ingress.hosts[0].paths[0].pathType=Prefix",
        "--set",
        "ingress.tls[0].secretName=mcp-tls,ingress.tls[0].hosts={mcp.corp.example}",
    ]);
    let ing = m.one("Ingress");
    assert_eq!(ing["spec"]["ingressClassName"], "nginx");
    let rule = &ing["spec"]["rules"][0];
    assert_eq!(rule["host"], "mcp.corp.example");
    let path = &rule["http"]["paths"][0];
    assert_eq!(path["path"], "/mcp");
    assert_eq!(
        path["backend"]["service"]["name"],
        m.service()["metadata"]["name"]
    );
    assert_eq!(path["backend"]["service"]["port"]["name"], "http");
    assert_eq!(ing["spec"]["tls"][0]["secretName"], "mcp-tls");
    let ann = &ing["metadata"]["annotations"];
    assert!(ann["nginx.ingress.kubernetes.io/proxy-buffer-size"].is_string());
    assert_eq!(ann["nginx.ingress.kubernetes.io/proxy-buffering"], "off");
    // publicUrl follows the ingress host (https with TLS).
    let text = str_of(&m.one("ConfigMap")["data"]["config.yaml"]);
    assert!(
        text.contains("publicUrl: https://mcp.corp.example"),
        "{text}"
    );
}

#[test]
fn a_pod_disruption_budget_exists_only_with_more_than_one_replica() {
    assert!(
        render(&["--set", "replicas=1"])
            .of_kind("PodDisruptionBudget")
            .is_empty()
    );
    let m = render(&["--set", "replicas=3"]);
    assert_eq!(m.deployment()["spec"]["replicas"], 3);
    let pdb = m.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        m.deployment()["spec"]["selector"]["matchLabels"]
    );
    let max = render(&["--set", "replicas=2,podDisruptionBudget.maxUnavailable=1"]);
    let pdb = max.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"]["minAvailable"].is_null());
    let off = render(&["--set", "replicas=3,podDisruptionBudget.enabled=false"]);
    assert!(off.of_kind("PodDisruptionBudget").is_empty());
}

#[test]
fn values_schema_rejects_bad_values() {
    for (args, needle) in [
        (&["--set", "replicas=three"][..], "replicas"),
        (&["--set", "replicaCount=3"][..], "replicaCount"),
        (
            &["--set", "secretNamespaces={Team_A}"][..],
            "secretNamespaces",
        ),
        (
            &["--set", "config.fanOut.maxConcurrency=0"][..],
            "maxConcurrency",
        ),
        (&["--set", "config.pingInterval=5"][..], "pingInterval"),
        (
            &["--set", "securityContext.runAsNonRoot=false"][..],
            "runAsNonRoot",
        ),
        (
            &["--set", "tracing.otlpEndpoint=otel-collector:4318"][..],
            "otlpEndpoint",
        ),
        (&["--set", "tracing.sampleRatio=1.5"][..], "sampleRatio"),
        (&["--set", "audit.file=audit.log"][..], "audit/file"),
        (
            &["--set", "metrics.serviceMonitor.interval=soon"][..],
            "interval",
        ),
        (&["--set", "metrics.scrape=true"][..], "scrape"),
    ] {
        // Both `helm lint` and the install-time schema check refuse them.
        let lint = helm(args).expect_err(&format!("lint accepted {args:?}"));
        assert!(lint.contains(needle), "{args:?}: {lint}");
        let mut no_lint = vec!["--no-lint"];
        no_lint.extend_from_slice(args);
        let render = helm(&no_lint).expect_err(&format!("render accepted {args:?}"));
        assert!(render.contains(needle), "{args:?}: {render}");
    }
}

#[test]
fn the_chart_crds_are_byte_identical_copies_of_crds() {
    for file in ["mcpserver.yaml", "mcpserverset.yaml", "toolpolicy.yaml"] {
        let top = std::fs::read(repo().join("crds").join(file)).expect("crds/ file");
        let copy = std::fs::read(chart().join("crds").join(file)).expect("chart crds copy");
        assert!(
            top == copy,
            "charts/flotilla/crds/{file} differs from crds/{file}; run\n  \
             cp crds/{file} charts/flotilla/crds/{file}"
        );
    }
    let mut crds: Vec<_> = std::fs::read_dir(chart().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    crds.sort();
    assert_eq!(
        crds,
        ["mcpserver.yaml", "mcpserverset.yaml", "toolpolicy.yaml"]
    );
}

#[test]
fn helm_installs_the_mcpserver_mcpserverset_and_toolpolicy_crds_from_the_chart() {
    let m = render(&["--include-crds"]);
    let crds = m.of_kind("CustomResourceDefinition");
    let names: Vec<&str> = crds
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "mcpservers.flotilla.dev",
            "mcpserversets.flotilla.dev",
            "toolpolicies.flotilla.dev"
        ]
    );
    assert_eq!(crds[0]["spec"]["names"]["shortNames"][0], "mcps");
    assert_eq!(crds[1]["spec"]["names"]["shortNames"][0], "mcpss");
    assert_eq!(crds[2]["spec"]["names"]["shortNames"][0], "tpol");
    // Not a template: `helm template` without --include-crds leaves it out.
    assert!(render(&[]).of_kind("CustomResourceDefinition").is_empty());
}

#[test]
fn notes_tell_how_to_reach_mcp_and_list_mcpservers() {
    let notes = helm(&["--notes", "--namespace", "ops"]).expect("notes");
    for needle in [
        "kubectl -n ops port-forward svc/flotilla 8080:8080",
        "http://127.0.0.1:8080/mcp",
        "http://flotilla.ops.svc:8080/mcp",
        "kubectl get mcps",
        "secretNamespaces",
    ] {
        assert!(
            notes.contains(needle),
            "NOTES.txt lacks {needle:?}:\n{notes}"
        );
    }
    let with_ingress = helm(&["--notes", "--set", "ingress.enabled=true"]).expect("notes");
    assert!(
        with_ingress.contains("http://mcp.example.com/mcp"),
        "{with_ingress}"
    );
}

#[test]
fn replicas_share_a_session_key_and_need_no_affinity() {
    let m = render(&[]);
    // Any replica serves any session: no affinity, no hashing at the ingress.
    assert_eq!(m.service()["spec"]["sessionAffinity"], "None");
    let with_ingress = render(&["--set", "ingress.enabled=true"]);
    let annotations = &with_ingress.one("Ingress")["metadata"]["annotations"];
    assert!(
        annotations
            .get("nginx.ingress.kubernetes.io/upstream-hash-by")
            .is_none(),
        "{annotations:?}"
    );
    // Without auth, the chart's own Secret holds one 32-byte key, mounted
    // where the config file says the key file is.
    let secret = m.one("Secret");
    assert_eq!(secret["metadata"]["name"], "flotilla-sealing-keys");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let line = b64
        .decode(str_of(&secret["data"]["sealing-keys"]))
        .expect("Secret data is base64");
    let key = b64
        .decode(String::from_utf8(line).unwrap().trim())
        .expect("the key line is base64");
    assert_eq!(key.len(), 32);
    assert_eq!(
        m.volume("sealing-keys").unwrap()["secret"]["secretName"],
        "flotilla-sealing-keys"
    );
    let mount = m.mount("sealing-keys").unwrap();
    assert_eq!(mount["mountPath"], "/etc/flotilla-keys");
    assert_eq!(mount["readOnly"], true);
    assert_eq!(
        m.config_file().sealing_key_file.as_deref(),
        Some(std::path::Path::new("/etc/flotilla-keys/sealing-keys"))
    );
    // A Secret of one's own replaces the chart's.
    let own = render(&["--set", "sessions.sealingKeysSecret=my-keys"]);
    assert!(own.of_kind("Secret").is_empty());
    assert_eq!(
        own.volume("sealing-keys").unwrap()["secret"]["secretName"],
        "my-keys"
    );
    // With auth, the auth Secret's key seals sessions too: nothing else mounted.
    let sso = render(&[
        "--set",
        "auth.enabled=true,auth.oidc.issuer=https://dex.example.com,auth.existingSecret=flotilla-auth",
    ]);
    assert!(sso.of_kind("Secret").is_empty());
    assert!(sso.volume("sealing-keys").is_none());
    assert!(sso.config_file().sealing_key_file.is_none());
}

#[test]
fn a_stopping_pod_leaves_the_endpoints_before_the_gateway_stops() {
    let m = render(&[]);
    assert_eq!(m.container()["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    let grace = m.deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap();
    assert!(grace >= 5 + 10, "{grace}");
    let off = render(&["--set", "preStopSeconds=0"]);
    assert!(off.container()["lifecycle"].is_null());
}

#[test]
fn autoscaling_renders_an_hpa_and_leaves_the_replica_count_to_it() {
    assert!(render(&[]).of_kind("HorizontalPodAutoscaler").is_empty());
    let m = render(&[
        "--set",
        "autoscaling.enabled=true,autoscaling.maxReplicas=6",
    ]);
    let hpa = m.one("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        m.deployment()["metadata"]["name"]
    );
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 6);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
    assert!(m.deployment()["spec"]["replicas"].is_null());
    // The disruption budget follows the autoscaler's floor.
    assert_eq!(m.one("PodDisruptionBudget")["spec"]["minAvailable"], 1);
    let error = helm(&["--no-lint", "--set", "autoscaling.minReplicas=0"])
        .err()
        .unwrap_or_default();
    assert!(error.contains("minReplicas"), "{error}");
}

#[test]
fn the_replicas_find_each_other_through_a_headless_service() {
    let m = render(&[]);
    let services = m.of_kind("Service");
    let peers = services
        .iter()
        .find(|s| s["metadata"]["name"] == "flotilla-peers")
        .expect("the peers Service");
    assert_eq!(peers["spec"]["clusterIP"], "None");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(
        peers["spec"]["selector"],
        m.deployment()["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(peers["spec"]["ports"][0]["port"], 8080);
    let config = m.config_file();
    let replica_peers = config.replica_peers.expect("replicaPeers in the config");
    assert_eq!(
        replica_peers.dns_name.as_deref(),
        Some("flotilla-peers.flotilla.svc")
    );
    // The pod's own address, for the others to reach it.
    let env = m.container()["env"].as_array().unwrap();
    let pod_ip = env.iter().find(|e| e["name"] == "POD_IP").expect("POD_IP");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
}

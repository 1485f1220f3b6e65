//! A whole SSO test world: a central OpenID provider, two clusters' Dex
//! (token exchange), four MCP servers (forwarding, two exchanging, and one
//! without auth) and a gateway with `auth:` on; plus the client-side helpers
//! the SSO tests share.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rmcp::ServiceExt as _;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

use super::idp::Idp;
use super::*;

pub const B_SECRET: &str = "b-client-secret-7f3e9a";
pub const C_SECRET: &str = "c-client-secret-41d0c2";
pub const GW_SECRET: &str = "gateway-client-secret-9c1b";
pub const SEALING_KEY: &str = "c2VhbGluZy1rZXktZm9yLXRlc3RzLTMyLWJ5dGVzISE=";

/// The Python SDK server with extra flags; returns it and its /mcp URL.
pub fn py_server_with(logs: &Path, name: &str, args: &[&str]) -> (Proc, String) {
    let p = peers();
    let mut cmd = Command::new(p.get("PY"));
    cmd.arg(p.get("PY_SERVER"))
        .arg("--port")
        .arg("0")
        .args(args);
    let proc = Proc::spawn(name, cmd, logs);
    let line = proc.wait_line("READY", Duration::from_secs(30));
    let url = line.trim_start_matches("READY ").trim().to_string();
    (proc, url)
}

/// Knobs of one test world.
pub struct Options {
    /// Lifetime of cluster B's exchanged tokens, and what it claims instead.
    pub b_token_ttl: u64,
    pub b_claimed_ttl: Option<u64>,
    /// `auth.tokenCache` of the gateway config, as YAML flow mapping.
    pub token_cache: &'static str,
    /// `auth.userSessions`, likewise.
    pub user_sessions: &'static str,
    /// The central IdP's `groups` claims, as `user=g1,g2`.
    pub groups: &'static [&'static str],
}

impl Default for Options {
    fn default() -> Self {
        Self {
            b_token_ttl: 3600,
            b_claimed_ttl: None,
            token_cache: "{failureBackoffSeconds: 1, failureBackoffMaxSeconds: 2}",
            user_sessions: "{warmupSeconds: 10}",
            groups: &[],
        }
    }
}

/// A central IdP, two clusters' Dex, four MCP servers and a gateway.
pub struct World {
    pub logs: tempfile::TempDir,
    pub manifests: tempfile::TempDir,
    pub central: Idp,
    pub dex_b: Idp,
    pub dex_c: Idp,
    pub servers: Vec<Proc>,
    pub gateway: Gateway,
    pub config: std::path::PathBuf,
}

impl World {
    pub fn start(options: Options) -> World {
        let logs = tempfile::tempdir().unwrap();
        let manifests = tempfile::tempdir().unwrap();
        let central = Idp::central_with(
            logs.path(),
            &[
                ("flotilla", GW_SECRET, &["http://127.0.0.1/oauth/callback"]),
                ("direct", "", &["http://127.0.0.1/cb"]),
            ],
            3600,
            options.groups,
        );
        let dex_b = Idp::cluster(
            logs.path(),
            "dex-b",
            &central.issuer,
            &[("flotilla-b", B_SECRET)],
            "cluster-b",
            options.b_token_ttl,
            options.b_claimed_ttl,
        );
        let dex_c = Idp::cluster(
            logs.path(),
            "dex-c",
            &central.issuer,
            &[("flotilla-c", C_SECRET)],
            "cluster-c",
            3600,
            None,
        );
        // Cluster A trusts the central issuer (forwarded tokens, audience cluster-a).
        let (a, a_url) = py_server_with(
            logs.path(),
            "py-a",
            &[
                "--require-bearer",
                &central.issuer,
                "--audience",
                "cluster-a",
            ],
        );
        // Cluster B trusts only its own Dex.
        let (b, b_url) = py_server_with(
            logs.path(),
            "py-b",
            &["--require-bearer", &dex_b.issuer, "--audience", "cluster-b"],
        );
        let (plain, plain_url) = py_server_with(logs.path(), "py-plain", &[]);
        // Cluster C: kubernetes-mcp-server validating issuer and audience.
        let kmcp_config = logs.path().join("kmcp.toml");
        std::fs::write(
            &kmcp_config,
            format!(
                "require_oauth = true\noauth_audience = \"cluster-c\"\nauthorization_url = \"{}\"\n",
                dex_c_issuer(&dex_c)
            ),
        )
        .unwrap();
        let (kmcp, kmcp_port) = kubernetes_mcp_server_with(
            0,
            logs.path(),
            &["--config", kmcp_config.to_str().unwrap()],
        );
        let secret = |name: &str, id: &str, secret: &str| {
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: default\nstringData:\n  client-id: {id}\n  client-secret: {secret}\n---\n"
            )
        };
        let exchange = |dex: &Idp, secret: &str| {
            format!(
                "  auth:\n    tokenExchange:\n      enabled: true\n      dexTokenEndpoint: {}\n      connectorId: central\n      clientCredentialsSecretRef:\n        name: {secret}\n",
                dex.token_endpoint()
            )
        };
        let fleet = [
            secret("dex-b-client", "flotilla-b", B_SECRET),
            secret("dex-c-client", "flotilla-c", C_SECRET),
            http_manifest(
                "cluster-a-echo",
                &a_url,
                "  auth:\n    forwardToken: true\n    requiredAudiences: [cluster-a]\n",
            ),
            "---\n".into(),
            http_manifest("cluster-b-echo", &b_url, &exchange(&dex_b, "dex-b-client")),
            "---\n".into(),
            http_manifest(
                "cluster-c-mcp-kubernetes",
                &format!("http://127.0.0.1:{kmcp_port}/mcp"),
                &exchange(&dex_c, "dex-c-client"),
            ),
            "---\n".into(),
            http_manifest("plain", &plain_url, ""),
        ]
        .concat();
        write_manifest(manifests.path(), "fleet.yaml", &fleet);
        let config = write_config(
            logs.path(),
            &central,
            options.token_cache,
            options.user_sessions,
        );
        let gateway = start_gateway(manifests.path(), logs.path(), &config, None);
        World {
            logs,
            manifests,
            central,
            dex_b,
            dex_c,
            servers: vec![a, b, plain, kmcp],
            gateway,
            config,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway.port)
    }

    /// Every log line the gateway wrote so far.
    pub fn gateway_log(&self) -> String {
        self.gateway.proc.log_text()
    }

    /// The gateway's audit log (`audit.file` beside its config), one JSON line per call.
    pub fn audit_log(&self) -> String {
        let dir = self.config.parent().expect("the config's directory");
        std::fs::read_to_string(dir.join("audit.log")).unwrap_or_default()
    }
}

pub fn dex_c_issuer(dex: &Idp) -> String {
    dex.issuer.clone()
}

/// The gateway's config file: SSO against `central`, a shared sealing key,
/// the audit log in `audit.log`; `auth:` comes last, so tests can append
/// settings of it.
pub fn write_config(
    dir: &Path,
    central: &Idp,
    token_cache: &str,
    user_sessions: &str,
) -> std::path::PathBuf {
    std::fs::write(dir.join("oidc-secret"), GW_SECRET).unwrap();
    std::fs::write(dir.join("sealing-key"), format!("{SEALING_KEY}\n")).unwrap();
    let config = dir.join("flotilla.yaml");
    std::fs::write(
        &config,
        format!(
            "audit:\n  file: audit.log\nauth:\n  oidc:\n    issuer: {}\n    clientId: flotilla\n    clientSecretFile: oidc-secret\n  sealingKeyFile: sealing-key\n  allowLoopbackHttpClientMetadata: true\n  trustedIssuers:\n    - issuer: {}\n      audiences: [direct]\n  tokenCache: {token_cache}\n  userSessions: {user_sessions}\n",
            central.issuer, central.issuer
        ),
    )
    .unwrap();
    config
}

pub fn start_gateway(
    manifests: &Path,
    logs: &Path,
    config: &Path,
    public_url: Option<&str>,
) -> Gateway {
    let mut args = vec!["--config", config.to_str().unwrap()];
    if let Some(url) = public_url {
        args.extend(["--public-url", url]);
    }
    Gateway::start_with(manifests, logs, &args)
}

/// GET with an optional bearer token: (status, headers, body).
pub fn blocking_get(url: &str, token: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
    let url = url.to_string();
    let token = token.map(str::to_string);
    std::thread::spawn(move || {
        let mut request = reqwest::blocking::Client::new().get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().unwrap_or_default())
    })
    .join()
    .unwrap()
}

pub async fn connect_as(url: &str, token: &str) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_string()).auth_header(token);
    TestClient::default()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// The token a server received, as its `auth_header` tool reports it.
pub async fn token_seen_by(client: &Client, tool: &str) -> String {
    let result = call(client, tool, serde_json::json!({})).await;
    let text = text_of(&result);
    assert_ne!(result.is_error, Some(true), "{tool}: {text}");
    text.trim_start_matches("Bearer ").to_string()
}

pub fn assert_absent(log: &str, secrets: &[&str]) {
    for secret in secrets.iter().filter(|s| s.len() > 8) {
        assert!(
            !log.contains(*secret),
            "a secret ({}…) appears in the log",
            &secret[..6]
        );
    }
}

//! Owns: third-party MCP clients completing the MCP authorization flow
//! against the gateway on their own. The Python SDK's OAuth client
//! (tests/peers/py_client.py --oauth) gets a 401, discovers the protected
//! resource and authorization server metadata, registers itself, sends the
//! user to /oauth/authorize with PKCE and redeems the code; the test only
//! plays the browser (a headless login at the central provider) and hands
//! the final redirect URL back to the client.

use std::io::Write;
use std::process::{ChildStdin, Command};
use std::time::{Duration, Instant};

use crate::common::idp::{browser_login, jwt_claims, query_param};
use crate::common::sso_world::*;
use crate::common::*;
use serde_json::Value;

/// How long one client run (registration, login, MCP call) may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A running py_client.py (a [`Proc`]: its own process group, stopped on
/// drop, stderr in a log file) with its stdin, for the redirect URL.
struct PyClient {
    proc: Proc,
    stdin: Option<ChildStdin>,
    started: Instant,
}

impl PyClient {
    fn spawn(world: &World, gateway: &str, name: &str, args: &[&str]) -> PyClient {
        let p = peers();
        let mut cmd = Command::new(p.get("PY"));
        cmd.arg(p.get("PY_CLIENT"))
            .args(["--url", gateway, "--oauth", "--timeout", "60"])
            .args(args);
        let (proc, stdin) = Proc::spawn_with_stdin(name, cmd, world.logs.path());
        PyClient {
            proc,
            stdin: Some(stdin),
            started: Instant::now(),
        }
    }

    /// The next stdout line, or a panic with the client's stderr.
    fn next_line(&self, what: &str) -> String {
        let left = RUN_TIMEOUT.saturating_sub(self.started.elapsed());
        self.proc.next_line(left).unwrap_or_else(|| {
            panic!(
                "py_client: no {what} after {:?}; stderr:\n{}",
                self.started.elapsed(),
                self.proc.log_text()
            )
        })
    }

    fn answer(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("writing to py_client's stdin");
        self.stdin = None;
    }

    /// The exit code, waiting until the run's deadline.
    fn wait(&mut self) -> i32 {
        while self.started.elapsed() < RUN_TIMEOUT {
            if let Some(status) = self.proc.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("py_client did not exit within {RUN_TIMEOUT:?}");
    }
}

/// What one authorized run showed.
pub(crate) struct Run {
    authorize_url: String,
    landed: String,
    pub(crate) output: Value,
}

/// Runs `py_client.py --url <gateway> --oauth <args>` as `user`: waits for
/// its `AUTHORIZE` line, logs in headlessly, hands back the final redirect
/// URL and returns the JSON it printed.
pub(crate) fn authorized_run(
    world: &World,
    gateway: &str,
    name: &str,
    user: &str,
    args: &[&str],
) -> Run {
    let mut client = PyClient::spawn(world, gateway, name, args);
    let line = client.next_line("AUTHORIZE line");
    let authorize_url = line
        .strip_prefix("AUTHORIZE ")
        .unwrap_or_else(|| panic!("expected `AUTHORIZE <url>`, got {line:?}"))
        .to_string();
    let redirect_uri = query_param(&authorize_url, "redirect_uri")
        .unwrap_or_else(|| panic!("no redirect_uri in {authorize_url}"));
    let landed = browser_login(&authorize_url, user, &redirect_uri);
    client.answer(&landed);
    let json = client.next_line("JSON result");
    let code = client.wait();
    assert_eq!(
        code,
        0,
        "py_client exited {code}; stderr:\n{}",
        client.proc.log_text()
    );
    let output = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    eprintln!("{name}: {:?}", client.started.elapsed());
    Run {
        authorize_url,
        landed,
        output,
    }
}

/// The secrets one run handled: the code and the tokens the gateway issued.
fn secrets_of(run: &Run) -> Vec<String> {
    let oauth = &run.output["oauth"];
    let mut secrets: Vec<String> = ["access_token", "refresh_token"]
        .iter()
        .filter_map(|k| oauth[*k].as_str().map(str::to_string))
        .collect();
    secrets.extend(query_param(&run.landed, "code"));
    secrets
}

/// The bearer token cluster B's `auth_header` tool reported in a `call` run;
/// asserts it is `user`'s token from cluster B's own Dex.
fn exchanged_token(world: &World, run: &Run, user: &str) -> String {
    assert_ne!(run.output["isError"], true, "{}", run.output);
    let text = run.output["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content: {}", run.output));
    let token = text.trim_start_matches("Bearer ").to_string();
    let claims = jwt_claims(&token);
    assert_eq!(claims["sub"], user, "{claims}");
    assert_eq!(claims["iss"], world.dex_b.issuer.as_str(), "{claims}");
    token
}

#[test]
fn python_sdk_oauth_client_logs_in_by_itself_and_reaches_the_sso_fleet() {
    let started = Instant::now();
    let world = World::start(Options::default());
    let base = world.base();
    let url = world.gateway.url();
    eprintln!("world up after {:?}", started.elapsed());

    // A call that needs an exchanged token, in the SDK's default mode (2026-07-28).
    let call = authorized_run(
        &world,
        &url,
        "py-client-call",
        "dora",
        &["call", "x_cluster-b-echo_auth_header", "{}"],
    );
    assert_eq!(call.output["protocolVersion"], "2026-07-28");
    let exchanged = exchanged_token(&world, &call, "dora");
    // The SDK found the gateway's endpoints itself and asked for what the spec says.
    let authorize = &call.authorize_url;
    assert!(
        authorize.starts_with(&format!("{base}/oauth/authorize?")),
        "{authorize}"
    );
    let param = |name: &str| query_param(authorize, name);
    assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param("resource"), Some(url.clone()));
    let oauth = &call.output["oauth"];
    let client_id = oauth["client_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no registered client: {oauth}"));
    assert_eq!(param("client_id").as_deref(), Some(client_id));
    // RFC 9207: the gateway names itself in the redirect (the SDK checked it too).
    assert_eq!(query_param(&call.landed, "iss").as_deref(), Some(&*base));
    // It asked for refresh (grant refresh_token, scope offline_access) and got a refresh token.
    let scope = param("scope").unwrap_or_default();
    assert!(scope.split(' ').any(|s| s == "offline_access"), "{scope}");
    assert_eq!(oauth["issued"], 1);
    assert!(oauth["access_token"].is_string());
    assert!(oauth["refresh_token"].is_string(), "no refresh token");

    // A second client (its own registration and login), classic initialize
    // handshake (2025-11-25), lists the whole fleet.
    let list = authorized_run(
        &world,
        &url,
        "py-client-list",
        "dora",
        &["--legacy", "list-tools"],
    );
    assert_eq!(list.output["protocolVersion"], "2025-11-25");
    assert_ne!(list.output["oauth"]["client_id"].as_str(), Some(client_id));
    let tools: Vec<&str> = list.output["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools: {}", list.output))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for expected in [
        "x_cluster-a-echo_auth_header",
        "x_cluster-b-echo_auth_header",
        "x_plain_auth_header",
    ] {
        assert!(tools.contains(&expected), "{expected} in {tools:?}");
    }
    assert!(
        tools
            .iter()
            .any(|t| t.starts_with("x_cluster-c-mcp-kubernetes_")),
        "kubernetes-mcp-server tools in {tools:?}"
    );

    // The SDK's own refresh: a second gateway (the world's config, files and
    // fleet, but access tokens living 4 s) and a second call 5 s into the
    // session, which the SDK precedes with a refresh_token grant at
    // /oauth/token, with no second login.
    let short_dir = tempfile::tempdir().unwrap();
    for file in ["oidc-secret", "sealing-key"] {
        std::fs::copy(world.logs.path().join(file), short_dir.path().join(file)).unwrap();
    }
    let mut config = std::fs::read_to_string(&world.config).unwrap();
    assert!(
        config.contains("\nauth:\n"),
        "auth: is the last section: {config}"
    );
    config.push_str("  accessTokenLifetimeSeconds: 4\n");
    let short_config = short_dir.path().join("flotilla.yaml");
    std::fs::write(&short_config, config).unwrap();
    let short = start_gateway(
        world.manifests.path(),
        short_dir.path(),
        &short_config,
        None,
    );
    let refresh_grants = |stats: &Value| stats["refresh_grants"]["dora"].as_u64().unwrap_or(0);
    let before = world.central.stats();
    let refreshed = authorized_run(
        &world,
        &short.url(),
        "py-client-refresh",
        "dora",
        &[
            "--repeat-after",
            "5",
            "call",
            "x_cluster-b-echo_auth_header",
            "{}",
        ],
    );
    let oauth = &refreshed.output["oauth"];
    assert_eq!(oauth["issued"], 2, "one login and one refresh: {oauth}");
    assert_eq!(oauth["expires_in"], 4, "{oauth}");
    let exchanged_after_refresh = exchanged_token(&world, &refreshed, "dora");
    let after = world.central.stats();
    assert_eq!(after["logins"]["dora"], 3, "{after}");
    // The gateway's refresh spent dora's refresh token at the central provider.
    assert_eq!(
        refresh_grants(&after),
        refresh_grants(&before) + 1,
        "{after}"
    );

    let mut secrets = secrets_of(&call);
    secrets.extend(secrets_of(&list));
    secrets.push(exchanged);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_absent(&world.gateway_log(), &secrets);
    let mut secrets = secrets_of(&refreshed);
    secrets.push(exchanged_after_refresh);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_absent(&short.proc.log_text(), &secrets);
    eprintln!("total {:?}", started.elapsed());
}

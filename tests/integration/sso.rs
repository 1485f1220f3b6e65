//! Single sign-on end to end, against real OpenID providers (npm
//! `oidc-provider` v9 as the central IdP and as each cluster's Dex, whose
//! token-exchange grant follows Dex's API), real MCP servers (the Python SDK
//! server echoing the Authorization header it got, behind a JWT check, and
//! `kubernetes-mcp-server` with `require_oauth`), and the gateway's own
//! OAuth endpoints driven by a headless browser.

use std::process::Command;
use std::time::Duration;

use crate::common::idp::{
    Idp, TEST_REDIRECT, browser_login, gateway_login, jwt_claims, login_as_client, pkce,
    query_param, token_request,
};
use crate::common::sso_world::*;
use crate::common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_login_reaches_three_sso_servers_each_with_the_right_token() {
    let world = World::start(Options::default());
    let base = world.base();
    // Unauthenticated: 401 pointing at the protected-resource metadata.
    let (status, headers, _) = blocking_get(&format!("{base}/mcp"), None);
    assert_eq!(status, 401);
    let challenge = headers["www-authenticate"].to_str().unwrap().to_string();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{base}/.well-known/oauth-protected-resource"
        )),
        "{challenge}"
    );
    let (_, _, prm) = blocking_get(
        &format!("{base}/.well-known/oauth-protected-resource/mcp"),
        None,
    );
    let prm: Value = serde_json::from_str(&prm).unwrap();
    assert_eq!(prm["resource"], format!("{base}/mcp"));
    assert_eq!(prm["authorization_servers"][0], base);
    let (_, _, asm) = blocking_get(
        &format!("{base}/.well-known/oauth-authorization-server"),
        None,
    );
    let asm: Value = serde_json::from_str(&asm).unwrap();
    assert_eq!(asm["code_challenge_methods_supported"], json!(["S256"]));

    let login = gateway_login(&base, "alice");
    assert!(
        !login.access_token.contains(world.central.issuer.as_str()),
        "the gateway's token must not expose the provider's tokens"
    );
    let client = connect_as(&world.gateway.url(), &login.access_token).await;
    let tools: Vec<String> = list_tools(&client)
        .await
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    for expected in [
        "x_cluster-a-echo_auth_header",
        "x_cluster-b-echo_auth_header",
        "x_plain_auth_header",
    ] {
        assert!(
            tools.contains(&expected.to_string()),
            "{expected} in {tools:?}"
        );
    }
    assert!(
        tools
            .iter()
            .any(|t| t.starts_with("x_cluster-c-mcp-kubernetes_")),
        "kubernetes-mcp-server accepted the exchanged token: {tools:?}"
    );

    // Forwarded: the user's own ID token from the central issuer, with the audience asked for.
    let forwarded = token_seen_by(&client, "x_cluster-a-echo_auth_header").await;
    let claims = jwt_claims(&forwarded);
    assert_eq!(claims["iss"], world.central.issuer.as_str());
    assert_eq!(claims["sub"], "alice");
    assert!(claims["aud"].to_string().contains("cluster-a"), "{claims}");
    // What cluster A received is no key to the gateway.
    let (status, _, _) = blocking_get(&format!("{base}/mcp"), Some(&forwarded));
    assert_eq!(status, 401, "a forwarded token replayed at /mcp");
    // Exchanged: a token from cluster B's Dex for cluster B.
    let exchanged = token_seen_by(&client, "x_cluster-b-echo_auth_header").await;
    let claims = jwt_claims(&exchanged);
    assert_eq!(claims["iss"], world.dex_b.issuer.as_str());
    assert_eq!(claims["sub"], "alice");
    assert!(claims["aud"].to_string().contains("cluster-b"), "{claims}");
    // No auth configured: no token at all.
    assert_eq!(
        token_seen_by(&client, "x_plain_auth_header").await,
        "<none>"
    );

    // The agent-readable status, and the HTTP one the CLI reads.
    let status = client
        .peer()
        .read_resource(rmcp::model::ReadResourceRequestParams::new("auth://status"))
        .await
        .expect("auth://status");
    let text = match &status.contents[0] {
        rmcp::model::ResourceContents::TextResourceContents { text, .. } => text.clone(),
        other => panic!("{other:?}"),
    };
    let report: Value = serde_json::from_str(&text).unwrap();
    let state_of = |name: &str| {
        report["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(report["user"]["subject"], "alice");
    assert_eq!(state_of("cluster-a-echo")["sso"], "Forwarded");
    assert_eq!(state_of("cluster-b-echo")["sso"], "Exchanged");
    assert_eq!(state_of("cluster-c-mcp-kubernetes")["state"], "Connected");
    assert_eq!(state_of("plain")["sso"], Value::Null);

    // A provider ID token presented directly (trusted issuer) works too.
    let direct = direct_id_token(&world.central, "erin");
    let erin = connect_as(&world.gateway.url(), &direct).await;
    let seen = token_seen_by(&erin, "x_cluster-b-echo_auth_header").await;
    assert_eq!(jwt_claims(&seen)["sub"], "erin");
    // A bad token is refused with a reason, not a crash.
    let (status, headers, _) = blocking_get(&format!("{base}/mcp"), Some("not-a-token"));
    assert_eq!(status, 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    erin.cancel().await.ok();
    client.cancel().await.ok();
    assert_absent(
        &(world.gateway_log() + &world.audit_log()),
        &[
            &login.access_token,
            &login.refresh_token,
            &forwarded,
            &exchanged,
            &direct,
            B_SECRET,
            C_SECRET,
            GW_SECRET,
            SEALING_KEY,
        ],
    );
    // The audit log (checked above for every token and secret) names each
    // caller by issuer and subject.
    let audit: Vec<Value> = world
        .audit_log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["kind"] == "tool_call")
        .collect();
    let by = |subject: &str, tool: &str| {
        audit.iter().any(|line| {
            line["caller"]["subject"] == subject
                && line["caller"]["issuer"] == world.central.issuer.as_str()
                && line["tool"] == tool
                && line["outcome"] == "ok"
        })
    };
    assert!(by("alice", "x_cluster-a-echo_auth_header"), "{audit:#?}");
    assert!(by("erin", "x_cluster-b-echo_auth_header"), "{audit:#?}");
}

/// An ID token straight from the central provider (auth code + PKCE).
fn direct_id_token(central: &Idp, user: &str) -> String {
    let (verifier, challenge) = pkce();
    let redirect = "http://127.0.0.1:9/cb";
    let url = central.authorize_url("direct", redirect, "openid profile", "s", &challenge);
    let landed = browser_login(&url, user, redirect);
    let code = query_param(&landed, "code").expect("code");
    let (status, body) = central.token_request(
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect),
            ("client_id", "direct"),
            ("code_verifier", &verifier),
        ],
    );
    assert_eq!(status, 200, "{body}");
    body["id_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_users_never_see_each_others_tokens_and_cost_one_exchange_each() {
    let world = World::start(Options::default());
    let base = world.base();
    // 100 concurrent first calls of a new user: exactly one exchange at cluster B.
    let carol = gateway_login(&base, "carol");
    let client = std::sync::Arc::new(connect_as(&world.gateway.url(), &carol.access_token).await);
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(
                async move { token_seen_by(&client, "x_cluster-b-echo_auth_header").await },
            )
        })
        .collect();
    for call in calls {
        assert_eq!(jwt_claims(&call.await.unwrap())["sub"], "carol");
    }
    let stats = world.dex_b.stats();
    assert_eq!(stats["exchanges"]["carol|flotilla-b"], 1, "{stats}");

    // Two users hammering the same server at once: every answer is their own.
    let mut users = Vec::new();
    for name in ["alice", "bob"] {
        let login = gateway_login(&base, name);
        users.push((
            name,
            std::sync::Arc::new(connect_as(&world.gateway.url(), &login.access_token).await),
        ));
    }
    let mut tasks = Vec::new();
    for (name, client) in &users {
        for worker in 0..16 {
            let client = client.clone();
            let name = name.to_string();
            tasks.push(tokio::spawn(async move {
                let tool = if worker % 2 == 0 {
                    "x_cluster-b-echo_auth_header"
                } else {
                    "x_cluster-a-echo_auth_header"
                };
                for _ in 0..75 {
                    let seen = token_seen_by(&client, tool).await;
                    assert_eq!(
                        jwt_claims(&seen)["sub"],
                        name.as_str(),
                        "{name} got another user's token"
                    );
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = world.dex_b.stats();
    assert_eq!(stats["exchanges"]["alice|flotilla-b"], 1, "{stats}");
    assert_eq!(stats["exchanges"]["bob|flotilla-b"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_downstream_401_costs_one_reexchange_and_one_retry() {
    // Cluster B's tokens live 3 s but claim an hour: the gateway keeps one
    // the server then rejects.
    let world = World::start(Options {
        b_token_ttl: 3,
        b_claimed_ttl: Some(3600),
        ..Default::default()
    });
    let login = gateway_login(&world.base(), "alice");
    let client = connect_as(&world.gateway.url(), &login.access_token).await;
    let first = token_seen_by(&client, "x_cluster-b-echo_auth_header").await;
    assert_eq!(world.dex_b.stats()["exchanges"]["alice|flotilla-b"], 1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = token_seen_by(&client, "x_cluster-b-echo_auth_header").await;
    assert_ne!(first, second, "the rejected token was replaced");
    assert_eq!(jwt_claims(&second)["sub"], "alice");
    let stats = world.dex_b.stats();
    assert_eq!(
        stats["exchanges"]["alice|flotilla-b"], 2,
        "one re-exchange: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_leads_to_a_reexchange() {
    // Tokens of 4 s with a 1 s safety margin: stale after 3 s.
    let world = World::start(Options {
        b_token_ttl: 4,
        b_claimed_ttl: None,
        token_cache: "{safetyMarginSeconds: 1, refreshAheadSeconds: 0}",
        ..Default::default()
    });
    let login = gateway_login(&world.base(), "alice");
    let client = connect_as(&world.gateway.url(), &login.access_token).await;
    let first = token_seen_by(&client, "x_cluster-b-echo_auth_header").await;
    let again = token_seen_by(&client, "x_cluster-b-echo_auth_header").await;
    assert_eq!(first, again, "cached while fresh");
    assert_eq!(world.dex_b.stats()["exchanges"]["alice|flotilla-b"], 1);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let later = token_seen_by(&client, "x_cluster-b-echo_auth_header").await;
    assert_ne!(first, later);
    let stats = world.dex_b.stats();
    assert_eq!(stats["exchanges"]["alice|flotilla-b"], 2, "{stats}");
    // No 401 was needed: the server never saw an expired token.
    assert_eq!(stats["rejected_total"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_cluster_dex_down_cached_tokens_work_and_new_users_get_a_clear_error() {
    let mut world = World::start(Options::default());
    let base = world.base();
    let alice = gateway_login(&base, "alice");
    let client = connect_as(&world.gateway.url(), &alice.access_token).await;
    token_seen_by(&client, "x_cluster-b-echo_auth_header").await;
    world.dex_b.stop();
    // Alice's cached token keeps working.
    let seen = token_seen_by(&client, "x_cluster-b-echo_auth_header").await;
    assert_eq!(jwt_claims(&seen)["sub"], "alice");
    // Bob cannot get one: the error names the endpoint and what happened.
    let bob = gateway_login(&base, "bob");
    let (status, _, body) = blocking_get(&format!("{base}/auth/status"), Some(&bob.access_token));
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    let line = report["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "cluster-b-echo")
        .cloned()
        .unwrap();
    assert_eq!(line["state"], "Failed", "{line}");
    let reason = line["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("unreachable") && reason.contains(&world.dex_b.token_endpoint()),
        "{reason}"
    );
    // Other servers are unaffected for Bob.
    let bob_client = connect_as(&world.gateway.url(), &bob.access_token).await;
    let seen = token_seen_by(&bob_client, "x_cluster-a-echo_auth_header").await;
    assert_eq!(jwt_claims(&seen)["sub"], "bob");
    let failed = call(&bob_client, "x_cluster-b-echo_auth_header", json!({})).await;
    assert_eq!(failed.is_error, Some(true));
    let why = text_of(&failed);
    assert!(
        why.contains("cluster-b-echo") && why.contains("unreachable"),
        "{why}"
    );
    client.cancel().await.ok();
    bob_client.cancel().await.ok();
    assert_absent(
        &world.gateway_log(),
        &[&alice.access_token, &bob.access_token, B_SECRET],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_survives_a_restart_works_on_another_replica_and_refreshes_with_rotation() {
    let mut world = World::start(Options::default());
    let base = world.base();
    let login = gateway_login(&base, "alice");
    // A second replica with the same sealing key (behind the same public
    // URL, as replicas behind one load balancer) accepts the same token.
    let replica = start_gateway(
        world.manifests.path(),
        world.logs.path(),
        &world.config,
        Some(&base),
    );
    let (status, _, body) = blocking_get(
        &format!("http://127.0.0.1:{}/auth/status", replica.port),
        Some(&login.access_token),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["user"]["subject"],
        "alice"
    );
    // The first one restarts: the token still works there.
    world.gateway.proc.stop();
    world.gateway = start_gateway(
        world.manifests.path(),
        world.logs.path(),
        &world.config,
        Some(&base),
    );
    let base = world.base();
    let (status, _, _) = blocking_get(&format!("{base}/auth/status"), Some(&login.access_token));
    assert_eq!(status, 200);
    // Refresh: new tokens; the old refresh token is spent.
    let refresh = |token: &str| {
        token_request(
            &format!("{base}/oauth/token"),
            None,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", token),
                ("client_id", &login.client_id),
            ],
        )
    };
    let (status, body) = refresh(&login.refresh_token);
    assert_eq!(status, 200, "{body}");
    let rotated = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rotated, login.refresh_token);
    let (status, _, _) = blocking_get(
        &format!("{base}/auth/status"),
        body["access_token"].as_str(),
    );
    assert_eq!(status, 200);
    let (status, body) = refresh(&login.refresh_token);
    assert_eq!(status, 400, "a replayed refresh token is refused: {body}");
    assert_eq!(body["error"], "invalid_grant");
    // PKCE plain is refused at the gateway.
    let mut authorize = url::Url::parse(&format!("{base}/oauth/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &login.client_id)
        .append_pair("redirect_uri", TEST_REDIRECT)
        .append_pair("code_challenge", "plain-challenge")
        .append_pair("code_challenge_method", "plain")
        .append_pair("state", "s");
    let (status, headers, _) = blocking_get_no_redirect(authorize.as_str());
    let location = headers
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        status == 400 || location.contains("error=invalid_request"),
        "{status} {location}"
    );
}

fn blocking_get_no_redirect(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let url = url.to_string();
    std::thread::spawn(move || {
        let response = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(&url)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().unwrap_or_default())
    })
    .join()
    .unwrap()
}

/// `flotilla auth login` with the browser driven headlessly, then `status`
/// and `logout`, as a person would run them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flotilla_auth_login_status_and_logout() {
    let world = World::start(Options::default());
    let home = tempfile::tempdir().unwrap();
    let endpoint = world.gateway.url();
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        cmd.arg("auth")
            .args(args)
            .arg("--endpoint")
            .arg(&endpoint)
            .env("FLOTILLA_CONFIG_DIR", home.path())
            .env("RUST_LOG", "debug")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        cmd
    };
    let mut login = cli(&["login", "--no-browser"]);
    login
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = login.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    // Keep reading stderr to the end, so the CLI never writes into a closed pipe.
    let stderr_text = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut all = String::new();
        let mut next_is_url = false;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if next_is_url {
                let _ = url_tx.send(line.clone());
                next_is_url = false;
            }
            next_is_url |= line.contains("Open this URL to log in:");
            all += &line;
            all.push('\n');
        }
        all
    });
    let url = url_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("login printed no URL");
    let redirect = query_param(&url, "redirect_uri").expect("redirect_uri in the login URL");
    browser_login(&url, "alice", &redirect);
    let output = child.wait_with_output().unwrap();
    let login_log = stderr_text.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "login failed: {stdout}\n{login_log}"
    );
    assert!(stdout.contains("as alice"), "{stdout}");
    let stored = home.path().join("credentials.json");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let status = cli(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(text.contains("Logged in as: alice"), "{text}");
    let line_of = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line_of("cluster-b-echo ").ends_with("Connected [SSO: Exchanged]"),
        "{text}"
    );
    assert!(
        line_of("cluster-a-echo ").ends_with("Connected [SSO: Forwarded]"),
        "{text}"
    );
    assert!(
        line_of("cluster-c-mcp-kubernetes ").ends_with("Connected [SSO: Exchanged]"),
        "{text}"
    );
    assert!(line_of("plain ").ends_with("Connected"), "{text}");
    assert_eq!(status.status.code(), Some(0), "{text}");
    let stderr = String::from_utf8_lossy(&status.stderr).to_string() + &login_log;
    let saved = std::fs::read_to_string(&stored).unwrap();
    let saved: Value = serde_json::from_str(&saved).unwrap();
    let access = saved["endpoints"][&endpoint]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_absent(&(stderr + &text), &[&access]);

    // A server whose exchange Dex refuses: its own line says why, exit code 4.
    write_manifest(
        world.manifests.path(),
        "refused.yaml",
        &http_manifest(
            "cluster-d-refused",
            "http://127.0.0.1:9/mcp",
            &format!(
                "  auth:\n    tokenExchange:\n      enabled: true\n      dexTokenEndpoint: {}\n      connectorId: no-such-connector\n      clientCredentialsSecretRef:\n        name: dex-b-client\n",
                world.dex_b.token_endpoint()
            ),
        ),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (code, text) = loop {
        let status = cli(&["status"]).output().unwrap();
        let text = String::from_utf8_lossy(&status.stdout).to_string();
        if text.contains("cluster-d-refused") && text.contains("Failed")
            || std::time::Instant::now() > deadline
        {
            break (status.status.code(), text);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let refused = text
        .lines()
        .find(|l| l.starts_with("cluster-d-refused "))
        .unwrap_or_default();
    assert!(
        refused.contains("Failed [SSO: exchange rejected: invalid_request"),
        "{text}"
    );
    assert_eq!(code, Some(4), "{text}");

    let stored_login = &saved["endpoints"][&endpoint];
    let stored_refresh = stored_login["refresh_token"].as_str().unwrap().to_string();
    let stored_client = stored_login["client_id"].as_str().unwrap().to_string();
    let logout = cli(&["logout"]).output().unwrap();
    assert!(logout.status.success());
    let said = String::from_utf8_lossy(&logout.stdout);
    assert!(said.contains("Revoked the login"), "{said}");
    // What the CLI held can no longer be refreshed.
    let (status, body) = token_request(
        &format!("{}/oauth/token", world.base()),
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &stored_refresh),
            ("client_id", &stored_client),
        ],
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let after = cli(&["status"]).output().unwrap();
    assert_eq!(after.status.code(), Some(3), "not logged in after logout");
    assert_absent(&world.gateway_log(), &[&access]);
}

/// RFC 7009 at the gateway: revoking a refresh token revokes the provider's
/// refresh token inside it, so the login cannot be refreshed anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_login_cannot_be_refreshed() {
    let world = World::start(Options::default());
    let base = world.base();
    let login = gateway_login(&base, "alice");
    let bob = gateway_login(&base, "bob");
    let revoke = |token: &str, client_id: &str| {
        token_request(
            &format!("{base}/oauth/revoke"),
            None,
            &[("token", token), ("client_id", client_id)],
        )
    };
    let refresh_bob = |token: &str| {
        token_request(
            &format!("{base}/oauth/token"),
            None,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", token),
                ("client_id", &bob.client_id),
            ],
        )
    };
    let (status, body) = refresh_bob(&bob.refresh_token);
    assert_eq!(status, 200, "{body}");
    let live = body["refresh_token"].as_str().unwrap().to_string();
    let (status, body) = revoke(&bob.access_token, &bob.client_id);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unsupported_token_type");
    let (status, body) = revoke(&live, &login.client_id);
    assert_eq!(
        status, 400,
        "only the client it was issued to may revoke it: {body}"
    );
    let (status, _) = revoke("not-a-token", &bob.client_id);
    assert_eq!(
        status, 200,
        "an unknown token is not an error (RFC 7009 2.2)"
    );
    let (status, body) = revoke(&live, &bob.client_id);
    assert_eq!(status, 200, "{body}");
    let (status, body) = refresh_bob(&live);
    assert_eq!(status, 400, "a revoked login cannot be refreshed: {body}");
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_users_idle_sessions_close_and_reopen_on_use_without_a_new_exchange() {
    let world = World::start(Options {
        user_sessions: "{warmupSeconds: 10, idleSeconds: 2}",
        ..Default::default()
    });
    let login = gateway_login(&world.base(), "alice");
    let client = connect_as(&world.gateway.url(), &login.access_token).await;
    token_seen_by(&client, "x_cluster-b-echo_auth_header").await;
    let status_url = format!("{}/status", world.base());
    let http = reqwest::Client::new();
    let open = || async {
        let response = http
            .get(&status_url)
            .bearer_auth(&login.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let report: serde_json::Value = response.json().await.unwrap();
        report["userSessions"].as_u64().unwrap_or(0)
    };
    assert_eq!(open().await, 3, "one session per SSO server for alice");
    // With auth on, the fleet's status is for logged-in callers only.
    let anonymous = http.get(&status_url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    // So is the fleet page, refused with the same answer.
    let ui_url = format!("{}/ui", world.base());
    let anonymous_ui = http.get(&ui_url).send().await.unwrap();
    assert_eq!(anonymous_ui.status(), 401);
    assert_eq!(
        anonymous_ui.headers().get("www-authenticate"),
        anonymous.headers().get("www-authenticate")
    );
    let page = http
        .get(&ui_url)
        .bearer_auth(&login.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Flotilla fleet"));
    // The authorization server's routes check Host like /mcp does.
    let metadata = format!("{}/.well-known/oauth-authorization-server", world.base());
    let foreign = http
        .get(&metadata)
        .header("host", "rebind.evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let own = http.get(&metadata).send().await.unwrap();
    assert_eq!(own.status(), 200);
    eventually(
        Duration::from_secs(15),
        "idle sessions to close",
        || async { (open().await == 0).then_some(()) },
    )
    .await;
    // The next call reopens the session; the cached exchanged token is reused.
    let seen = token_seen_by(&client, "x_cluster-b-echo_auth_header").await;
    assert_eq!(jwt_claims(&seen)["sub"], "alice");
    assert_eq!(world.dex_b.stats()["exchanges"]["alice|flotilla-b"], 1);
    client.cancel().await.ok();
}

/// A client identified by a client ID metadata document (an https URL in
/// production; loopback http here, which the test config allows), served by
/// Python's own http.server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_id_metadata_document_client_logs_in() {
    let world = World::start(Options::default());
    let base = world.base();
    let docs = tempfile::tempdir().unwrap();
    // Python's own http.server on a port of the kernel's choice; the
    // document (which names its own URL) is written once the port is known.
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        "--directory",
    ])
    .arg(docs.path());
    let docs_server = Proc::spawn("client-metadata", cmd, world.logs.path());
    let port = listening_port(&docs_server, Duration::from_secs(10));
    let client_id = format!("http://127.0.0.1:{port}/client.json");
    std::fs::write(
        docs.path().join("client.json"),
        json!({
            "client_id": client_id,
            "client_name": "metadata-document client",
            "redirect_uris": [TEST_REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        })
        .to_string(),
    )
    .unwrap();
    let login = login_as_client(&base, &client_id, "frank");
    let token = login.access_token.as_str();
    let (status, _, report) = blocking_get(&format!("{base}/auth/status"), Some(token));
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&report).unwrap()["user"]["subject"],
        "frank"
    );
    // A redirect URI the document does not list is refused before any login.
    let (_, challenge) = pkce();
    let mut wrong = url::Url::parse(&format!("{base}/oauth/authorize")).unwrap();
    wrong
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", "https://evil.example/cb")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let (status, headers, _) = blocking_get_no_redirect(wrong.as_str());
    assert_eq!(status, 400, "{:?}", headers.get("location"));
}

/// A tool appearing on one of the user's own sessions reaches both kinds of
/// client of that user: a 2025 session (tools/list_changed on its stream) and
/// a stateless 2026-07-28 client (through subscriptions/listen).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_users_clients_hear_when_their_own_sessions_tools_change() {
    let world = World::start(Options::default());
    let login = gateway_login(&world.base(), "alice");
    let handler = TestClient::default();
    let config =
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            world.gateway.url(),
        )
        .auth_header(login.access_token.clone());
    let session = rmcp::ServiceExt::serve(
        handler.clone(),
        rmcp::transport::StreamableHttpClientTransport::from_config(config.clone()),
    )
    .await
    .expect("2025 session");
    let (_stateless, mut subscription) = tools_listener(
        rmcp::transport::StreamableHttpClientTransport::from_config(config),
    )
    .await;

    let grown = call(&session, "x_cluster-a-echo_grow", json!({"name": "sprout"})).await;
    assert_eq!(text_of(&grown), "added sprout");
    eventually(
        Duration::from_secs(10),
        "the new tool in alice's list",
        || async {
            let names: Vec<String> = list_tools(&session)
                .await
                .into_iter()
                .map(|t| t.name.to_string())
                .collect();
            names
                .contains(&"x_cluster-a-echo_sprout".to_string())
                .then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "a 2025 tools/list_changed",
        || async {
            (handler
                .tool_list_changes
                .load(std::sync::atomic::Ordering::SeqCst)
                > 0)
            .then_some(())
        },
    )
    .await;
    let notified = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("a 2026 notification in time")
        .expect("subscription open");
    assert!(
        matches!(
            notified,
            Some(rmcp::model::ServerNotification::ToolListChangedNotification(_))
        ),
        "{notified:?}"
    );
    session.cancel().await.ok();
}

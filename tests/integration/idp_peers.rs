//! Self-test of the OpenID provider test peers (tests/peers/oidc_provider.mjs
//! via tests/integration/common/idp.rs, and py_server.py --require-bearer): auth code +
//! PKCE with the headless browser login, refresh token rotation, Dex
//! cross-client audiences, Dex-shaped RFC 8693 token exchange and its errors,
//! and a bearer-guarded MCP server accepting the exchanged token.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::idp::{self, Idp};
use crate::common::{Proc, peers, unserved_port};
use serde_json::{Value, json};

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"idp-peers","version":"1"}}}"#;

/// POSTs an MCP initialize to `url`; returns (status, WWW-Authenticate).
fn post_initialize(url: &str, bearer: Option<&str>) -> (u16, String) {
    let mut request = reqwest::blocking::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(INITIALIZE);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().expect("POST initialize");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (response.status().as_u16(), challenge)
}

fn get_json(url: &str) -> Value {
    reqwest::blocking::get(url)
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The `kid` in a JWT's protected header.
fn jwt_kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let header: Value = serde_json::from_slice(&bytes).unwrap();
    header["kid"].as_str().unwrap().to_string()
}

#[test]
fn oidc_peers_login_refresh_exchange_and_bearer_guard() {
    let started = Instant::now();
    let logs = tempfile::tempdir().unwrap();
    let logs = logs.path();

    // ---- central IdP: auth code + PKCE S256 with a public client ----
    let gateway_callback = "http://127.0.0.1/oauth/callback";
    let central = Idp::central(
        logs,
        &[
            ("cli", "", &["http://127.0.0.1/callback"]),
            ("gateway", "gw-secret", &[gateway_callback]),
        ],
        600,
    );
    // The cluster peers start in the background meanwhile (~1 s each).
    let client = ("flotilla", "s3cret");
    let start_cluster = |name: &'static str, audience: &'static str, ttl, claimed| {
        let (logs, central) = (logs.to_path_buf(), central.issuer.clone());
        std::thread::spawn(move || {
            Idp::cluster(&logs, name, &central, &[client], audience, ttl, claimed)
        })
    };
    let kube_a = start_cluster("kube-a", "kube-a", 600, None);
    let kube_b = start_cluster("kube-b", "", 5, Some(3600));
    // Loopback redirect URIs match on any port; nothing listens on this one.
    let redirect_uri = format!("http://127.0.0.1:{}/callback", unserved_port());
    let (verifier, challenge) = idp::pkce();
    let authorize = central.authorize_url(
        "cli",
        &redirect_uri,
        "openid profile email offline_access audience:server:client_id:kube-a",
        "state-1",
        &challenge,
    );
    let landed = idp::browser_login(&authorize, "alice", &redirect_uri);
    assert_eq!(
        idp::query_param(&landed, "state").as_deref(),
        Some("state-1")
    );
    assert_eq!(
        idp::query_param(&landed, "iss").as_deref(),
        Some(central.issuer.as_str())
    );
    let code = idp::query_param(&landed, "code").expect("code in the redirect");

    let (status, tokens) = central.token_request(
        None,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "cli"),
            ("code", &code),
            ("code_verifier", &verifier),
            ("redirect_uri", &redirect_uri),
        ],
    );
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let id_token = tokens["id_token"].as_str().unwrap().to_string();
    let claims = idp::jwt_claims(&id_token);
    assert_eq!(claims["iss"], central.issuer.as_str());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["name"], "Alice");
    // Dex cross-client scope: the peer is added to aud, the client is azp.
    assert_eq!(claims["aud"], json!(["cli", "kube-a"]));
    assert_eq!(claims["azp"], "cli");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        600
    );
    let central_jwks = get_json(&format!("{}/jwks", central.issuer));
    assert_eq!(central_jwks["keys"][0]["kid"], jwt_kid(&id_token).as_str());

    // ---- refresh with rotation; the rotated-out token is refused ----
    let refresh_token = tokens["refresh_token"].as_str().expect("refresh_token");
    let (status, refreshed) = central.token_request(
        None,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "cli"),
            ("refresh_token", refresh_token),
        ],
    );
    assert_eq!(status, 200, "{refreshed}");
    let rotated = refreshed["refresh_token"]
        .as_str()
        .expect("rotated refresh token");
    assert_ne!(rotated, refresh_token);
    let claims = idp::jwt_claims(refreshed["id_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], json!(["cli", "kube-a"]));
    let (status, reused) = central.token_request(
        None,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "cli"),
            ("refresh_token", refresh_token),
        ],
    );
    assert_eq!(
        (status, reused["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // ---- confidential client (Basic auth): PKCE is enforced; without
    // offline_access there is no refresh token; aud is the plain client id ----
    let gateway = ("gateway", "gw-secret");
    let callback = gateway_callback.replace("127.0.0.1", &format!("127.0.0.1:{}", unserved_port()));
    let (verifier, challenge) = idp::pkce();
    let authorize = central.authorize_url("gateway", &callback, "openid profile", "s2", &challenge);
    let code =
        idp::query_param(&idp::browser_login(&authorize, "bob", &callback), "code").expect("code");
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", callback.as_str()),
        (
            "code_verifier",
            "wrong-verifier-wrong-verifier-wrong-verifier-0",
        ),
    ];
    let (status, body) = central.token_request(Some(gateway), &form);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    form[3].1 = &verifier;
    let (status, body) = central.token_request(Some(("gateway", "nope")), &form);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, bob) = central.token_request(Some(gateway), &form);
    assert_eq!(status, 200, "{bob}");
    assert!(bob.get("refresh_token").is_none(), "{bob}");
    assert_eq!(
        idp::jwt_claims(bob["id_token"].as_str().unwrap())["aud"],
        "gateway"
    );

    let stats = central.stats();
    assert_eq!(stats["logins"], json!({"alice": 1, "bob": 1}));
    assert_eq!(stats["code_grants"], json!({"alice": 1, "bob": 1}));
    assert_eq!(stats["refresh_grants"], json!({"alice": 1}));

    // ---- cluster Dex: RFC 8693 token exchange ----
    let mut cluster = kube_a.join().expect("kube-a started");
    // py_server.py --require-bearer accepting only kube-a's tokens (used below).
    let py = {
        let (logs, issuer) = (logs.to_path_buf(), cluster.issuer.clone());
        std::thread::spawn(move || {
            let p = peers();
            let mut cmd = Command::new(p.get("PY"));
            cmd.arg(p.get("PY_SERVER"))
                .args(["--port", "0", "--json-response"])
                .args(["--require-bearer", &issuer, "--audience", "kube-a"]);
            let py = Proc::spawn("py-server-bearer", cmd, &logs);
            let line = py.wait_line("READY", Duration::from_secs(30));
            let mcp = line.trim_start_matches("READY ").trim().to_string();
            (py, mcp)
        })
    };
    let discovery = get_json(&format!(
        "{}/.well-known/openid-configuration",
        cluster.issuer
    ));
    assert_eq!(
        discovery["token_endpoint"],
        cluster.token_endpoint().as_str()
    );
    assert_eq!(
        discovery["jwks_uri"],
        format!("{}/jwks", cluster.issuer).as_str()
    );
    assert!(
        discovery["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(idp::TOKEN_EXCHANGE))
    );

    let (status, exchanged) = cluster.exchange(client, &id_token, "central");
    assert_eq!(status, 200, "{exchanged}");
    let mut keys: Vec<&str> = exchanged
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "access_token",
            "expires_in",
            "issued_token_type",
            "token_type"
        ]
    );
    assert_eq!(exchanged["token_type"], "bearer");
    assert_eq!(exchanged["issued_token_type"], idp::TOKEN_TYPE_ACCESS);
    assert_eq!(exchanged["expires_in"], 600);
    let cluster_token = exchanged["access_token"].as_str().unwrap().to_string();
    let minted = idp::jwt_claims(&cluster_token);
    assert_eq!(minted["iss"], cluster.issuer.as_str());
    assert_eq!(minted["aud"], "kube-a");
    assert_eq!(minted["sub"], "alice");
    assert_eq!(minted["email"], "alice@example.com");
    assert_eq!(minted["preferred_username"], "alice");
    assert_eq!(
        minted["exp"].as_u64().unwrap() - minted["iat"].as_u64().unwrap(),
        600
    );
    let cluster_jwks = get_json(&format!("{}/jwks", cluster.issuer));
    assert_eq!(
        cluster_jwks["keys"][0]["kid"],
        jwt_kid(&cluster_token).as_str()
    );
    let stats = cluster.stats();
    assert_eq!(stats["exchanges"], json!({"alice|flotilla": 1}));
    assert_eq!(stats["exchanges_total"], 1);

    // Errors, as Dex answers them.
    let (status, body) = cluster.exchange(("flotilla", "wrong"), &id_token, "central");
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = cluster.exchange(client, &id_token, "github");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = cluster.exchange(client, "not.a.token", "central");
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("access_denied"))
    );
    let stats = cluster.stats();
    assert_eq!(stats["exchanges"], json!({"alice|flotilla": 1}));
    assert_eq!(stats["exchanges_total"], 4);
    assert_eq!(stats["rejected_total"], 3);

    // ---- --claimed-ttl: expires_in lies, exp does not ----
    let liar = kube_b.join().expect("kube-b started");
    let (status, body) = liar.exchange(client, &id_token, "central");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 3600);
    let short = idp::jwt_claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        short["aud"], "flotilla",
        "default audience is the client id"
    );
    assert_eq!(
        short["exp"].as_u64().unwrap() - short["iat"].as_u64().unwrap(),
        5
    );

    // ---- py_server.py --require-bearer accepts only the cluster's tokens ----
    let (_py, mcp) = py.join().expect("py_server started");
    let stats_url = mcp.replace("/mcp", "/stats");
    let (status, challenge) = post_initialize(&mcp, None);
    assert_eq!((status, challenge.as_str()), (401, r#"Bearer realm="py""#));
    assert_eq!(
        post_initialize(&mcp, Some(&id_token)).0,
        401,
        "central token"
    );
    assert_eq!(post_initialize(&mcp, Some(&cluster_token)).0, 200);
    assert_eq!(
        get_json(&stats_url),
        json!({"unauthorized": 2, "authorized": 1})
    );

    // ---- restart: same issuer, new key, counters gone ----
    cluster.restart();
    assert_eq!(cluster.stats()["exchanges_total"], 0);
    let (status, again) = cluster.exchange(client, &id_token, "central");
    assert_eq!(status, 200, "{again}");
    let renewed = again["access_token"].as_str().unwrap();
    assert_ne!(jwt_kid(renewed), jwt_kid(&cluster_token));
    // py_server picks up the new key at once (and keeps trusting keys it saw).
    assert_eq!(post_initialize(&mcp, Some(renewed)).0, 200, "new key");
    assert_eq!(
        post_initialize(&mcp, Some(&cluster_token)).0,
        200,
        "old key"
    );
    assert_eq!(cluster.stats()["exchanges_total"], 1);
    cluster.reset();
    assert_eq!(
        cluster.stats(),
        json!({"exchanges": {}, "exchanges_total": 0, "rejected_total": 0, "rejected": {}})
    );

    eprintln!("idp_peers took {:?}", started.elapsed());
}

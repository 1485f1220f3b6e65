//! Self-test of the OpenID provider test peers (tests/peers/oidc_provider.mjs
//! via tests/integration/common/idp.rs, and py_server.py --require-bearer),
//! one flow per test: auth code + PKCE with the headless browser login (a
//! public and a confidential client, Dex cross-client audiences), refresh
//! token rotation, the central provider's counters, Dex-shaped RFC 8693 token
//! exchange and its errors, a lying `expires_in`, a bearer-guarded MCP server
//! accepting only the exchanged token, and a cluster provider's restart.
//! Each test starts its own providers on port 0; the helpers below share the
//! setup, never state.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::idp::{self, Idp};
use crate::common::{Proc, peers, unserved_port};
use serde_json::{Value, json};

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"idp-peers","version":"1"}}}"#;

/// The public client's registered redirect URI (loopback: any port matches).
const CLI_REDIRECT: &str = "http://127.0.0.1/callback";
/// The confidential client's registered redirect URI.
const GATEWAY_CALLBACK: &str = "http://127.0.0.1/oauth/callback";
/// The confidential client at the central IdP (HTTP Basic auth).
const GATEWAY: (&str, &str) = ("gateway", "gw-secret");
/// The client the cluster Dexes know (HTTP Basic auth).
const FLOTILLA: (&str, &str) = ("flotilla", "s3cret");
/// Alice's scope: a refresh token, and kube-a in her ID token's audience.
const ALICE_SCOPE: &str = "openid profile email offline_access audience:server:client_id:kube-a";

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

/// The central IdP: public client `cli`, confidential client `gateway`,
/// ID tokens valid for 600 s.
fn central(logs: &Path) -> Idp {
    Idp::central(
        logs,
        &[
            ("cli", "", &[CLI_REDIRECT]),
            (GATEWAY.0, GATEWAY.1, &[GATEWAY_CALLBACK]),
        ],
        600,
    )
}

/// A login in the headless browser: where it landed (the redirect URI with
/// `code`, `state` and `iss`), its PKCE verifier and its redirect URI.
struct Login {
    landed: String,
    verifier: String,
    redirect_uri: String,
}

impl Login {
    fn code(&self) -> String {
        idp::query_param(&self.landed, "code").expect("code in the redirect")
    }
}

/// `user` logs in at `client_id` (auth code + PKCE S256), redirected to
/// `path` on a loopback port nothing listens on.
fn log_in(
    central: &Idp,
    client_id: &str,
    path: &str,
    scope: &str,
    state: &str,
    user: &str,
) -> Login {
    let redirect_uri = format!("http://127.0.0.1:{}{path}", unserved_port());
    let (verifier, challenge) = idp::pkce();
    let authorize = central.authorize_url(client_id, &redirect_uri, scope, state, &challenge);
    let landed = idp::browser_login(&authorize, user, &redirect_uri);
    Login {
        landed,
        verifier,
        redirect_uri,
    }
}

/// Alice logs in at the public client `cli` with [`ALICE_SCOPE`].
fn alice_logs_in(central: &Idp) -> Login {
    log_in(central, "cli", "/callback", ALICE_SCOPE, "state-1", "alice")
}

/// Redeems the code of a login at `cli` (public: no client authentication).
fn redeem_at_cli(central: &Idp, login: &Login) -> (u16, Value) {
    central.token_request(
        None,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "cli"),
            ("code", &login.code()),
            ("code_verifier", &login.verifier),
            ("redirect_uri", &login.redirect_uri),
        ],
    )
}

/// Alice's tokens at `cli`: ID token, access token, refresh token.
fn alice_tokens(central: &Idp) -> Value {
    let (status, tokens) = redeem_at_cli(central, &alice_logs_in(central));
    assert_eq!(status, 200, "{tokens}");
    tokens
}

/// Alice's ID token from the central IdP (the subject token of exchanges).
fn alice_id_token(central: &Idp) -> String {
    alice_tokens(central)["id_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A refresh grant at `cli`.
fn refresh(central: &Idp, refresh_token: &str) -> (u16, Value) {
    central.token_request(
        None,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "cli"),
            ("refresh_token", refresh_token),
        ],
    )
}

/// Bob logs in at the confidential client `gateway` (no offline_access).
fn bob_logs_in(central: &Idp) -> Login {
    log_in(
        central,
        GATEWAY.0,
        "/oauth/callback",
        "openid profile",
        "s2",
        "bob",
    )
}

/// Redeems the code of a login at `gateway` with client authentication
/// `basic` and PKCE verifier `verifier`.
fn redeem_at_gateway(
    central: &Idp,
    basic: (&str, &str),
    login: &Login,
    verifier: &str,
) -> (u16, Value) {
    central.token_request(
        Some(basic),
        &[
            ("grant_type", "authorization_code"),
            ("code", &login.code()),
            ("redirect_uri", &login.redirect_uri),
            ("code_verifier", verifier),
        ],
    )
}

const WRONG_VERIFIER: &str = "wrong-verifier-wrong-verifier-wrong-verifier-0";

/// Cluster A's Dex: exchanges central ID tokens for tokens with aud kube-a,
/// valid for 600 s.
fn kube_a(logs: &Path, central: &Idp) -> Idp {
    Idp::cluster(
        logs,
        "kube-a",
        &central.issuer,
        &[FLOTILLA],
        "kube-a",
        600,
        None,
    )
}

/// Exchanges `id_token` at `cluster` as [`FLOTILLA`]; returns the access token.
fn exchanged(cluster: &Idp, id_token: &str) -> String {
    let (status, exchanged) = cluster.exchange(FLOTILLA, id_token, "central");
    assert_eq!(status, 200, "{exchanged}");
    exchanged["access_token"].as_str().unwrap().to_string()
}

/// py_server.py --require-bearer accepting only `issuer`'s tokens with aud
/// kube-a, on a port of its choice; returns it and its /mcp URL.
fn bearer_guarded_server(logs: &Path, issuer: &str) -> (Proc, String) {
    let p = peers();
    let mut cmd = Command::new(p.get("PY"));
    cmd.arg(p.get("PY_SERVER"))
        .args(["--port", "0", "--json-response"])
        .args(["--require-bearer", issuer, "--audience", "kube-a"]);
    let py = Proc::spawn("py-server-bearer", cmd, logs);
    let line = py.wait_line("READY", Duration::from_secs(30));
    let mcp = line.trim_start_matches("READY ").trim().to_string();
    (py, mcp)
}

#[test]
fn a_public_client_logs_in_with_auth_code_and_pkce_and_gets_a_dex_shaped_id_token() {
    let logs = tempfile::tempdir().unwrap();
    let central = central(logs.path());
    let login = alice_logs_in(&central);
    assert_eq!(
        idp::query_param(&login.landed, "state").as_deref(),
        Some("state-1")
    );
    assert_eq!(
        idp::query_param(&login.landed, "iss").as_deref(),
        Some(central.issuer.as_str())
    );
    let (status, tokens) = redeem_at_cli(&central, &login);
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
}

#[test]
fn a_refresh_token_rotates_and_the_rotated_out_one_is_refused() {
    let logs = tempfile::tempdir().unwrap();
    let central = central(logs.path());
    let tokens = alice_tokens(&central);
    let refresh_token = tokens["refresh_token"].as_str().expect("refresh_token");
    let (status, refreshed) = refresh(&central, refresh_token);
    assert_eq!(status, 200, "{refreshed}");
    let rotated = refreshed["refresh_token"]
        .as_str()
        .expect("rotated refresh token");
    assert_ne!(rotated, refresh_token);
    let claims = idp::jwt_claims(refreshed["id_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], json!(["cli", "kube-a"]));
    let (status, reused) = refresh(&central, refresh_token);
    assert_eq!(
        (status, reused["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

/// A confidential client (Basic auth): PKCE is enforced; without
/// offline_access there is no refresh token; aud is the plain client id.
#[test]
fn a_confidential_client_needs_its_verifier_and_secret_and_gets_no_refresh_token() {
    let logs = tempfile::tempdir().unwrap();
    let central = central(logs.path());
    let login = bob_logs_in(&central);
    let (status, body) = redeem_at_gateway(&central, GATEWAY, &login, WRONG_VERIFIER);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = redeem_at_gateway(&central, ("gateway", "nope"), &login, &login.verifier);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, bob) = redeem_at_gateway(&central, GATEWAY, &login, &login.verifier);
    assert_eq!(status, 200, "{bob}");
    assert!(bob.get("refresh_token").is_none(), "{bob}");
    assert_eq!(
        idp::jwt_claims(bob["id_token"].as_str().unwrap())["aud"],
        "gateway"
    );
}

/// The central IdP's counters: logins, and code and refresh grants that
/// succeeded, per user (the refused attempts of the flows above count not).
#[test]
fn the_central_idp_counts_logins_and_granted_codes_and_refreshes_per_user() {
    let logs = tempfile::tempdir().unwrap();
    let central = central(logs.path());
    // Alice at the public client: a code, a refresh, a refused reuse.
    let tokens = alice_tokens(&central);
    let refresh_token = tokens["refresh_token"].as_str().expect("refresh_token");
    assert_eq!(refresh(&central, refresh_token).0, 200);
    assert_eq!(refresh(&central, refresh_token).0, 400);
    // Bob at the confidential client: a wrong verifier, a wrong secret, a code.
    let login = bob_logs_in(&central);
    assert_eq!(
        redeem_at_gateway(&central, GATEWAY, &login, WRONG_VERIFIER).0,
        400
    );
    assert_eq!(
        redeem_at_gateway(&central, ("gateway", "nope"), &login, &login.verifier).0,
        401
    );
    assert_eq!(
        redeem_at_gateway(&central, GATEWAY, &login, &login.verifier).0,
        200
    );

    let stats = central.stats();
    assert_eq!(stats["logins"], json!({"alice": 1, "bob": 1}));
    assert_eq!(stats["code_grants"], json!({"alice": 1, "bob": 1}));
    assert_eq!(stats["refresh_grants"], json!({"alice": 1}));
}

/// Cluster Dex: RFC 8693 token exchange of a central ID token.
#[test]
fn a_cluster_dex_exchanges_a_central_id_token_for_a_token_of_its_own() {
    let logs = tempfile::tempdir().unwrap();
    let central = central(logs.path());
    let id_token = alice_id_token(&central);
    let cluster = kube_a(logs.path(), &central);
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

    let (status, exchanged) = cluster.exchange(FLOTILLA, &id_token, "central");
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
}

/// Refused exchanges, as Dex answers them, after one that succeeded.
#[test]
fn a_cluster_dex_refuses_a_wrong_secret_connector_or_subject_token_as_dex_does() {
    let logs = tempfile::tempdir().unwrap();
    let central = central(logs.path());
    let id_token = alice_id_token(&central);
    let cluster = kube_a(logs.path(), &central);
    exchanged(&cluster, &id_token);

    let (status, body) = cluster.exchange(("flotilla", "wrong"), &id_token, "central");
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = cluster.exchange(FLOTILLA, &id_token, "github");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = cluster.exchange(FLOTILLA, "not.a.token", "central");
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("access_denied"))
    );
    let stats = cluster.stats();
    assert_eq!(stats["exchanges"], json!({"alice|flotilla": 1}));
    assert_eq!(stats["exchanges_total"], 4);
    assert_eq!(stats["rejected_total"], 3);
}

/// `--claimed-ttl`: expires_in lies, exp does not.
#[test]
fn a_claimed_ttl_changes_expires_in_but_not_the_tokens_exp() {
    let logs = tempfile::tempdir().unwrap();
    let central = central(logs.path());
    let id_token = alice_id_token(&central);
    let liar = Idp::cluster(
        logs.path(),
        "kube-b",
        &central.issuer,
        &[FLOTILLA],
        "",
        5,
        Some(3600),
    );
    let (status, body) = liar.exchange(FLOTILLA, &id_token, "central");
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
}

/// py_server.py --require-bearer accepts only the cluster's tokens: no
/// token and the central (downstream) ID token are refused.
#[test]
fn a_bearer_guarded_server_accepts_only_the_clusters_tokens() {
    let logs = tempfile::tempdir().unwrap();
    let central = central(logs.path());
    let id_token = alice_id_token(&central);
    let cluster = kube_a(logs.path(), &central);
    let (_py, mcp) = bearer_guarded_server(logs.path(), &cluster.issuer);
    let cluster_token = exchanged(&cluster, &id_token);

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
}

/// A restarted cluster Dex: same issuer, new key, counters gone; a
/// bearer-guarded server picks up the new key at once (and keeps trusting
/// keys it saw).
#[test]
fn a_restarted_cluster_dex_has_a_new_key_and_forgets_its_counters() {
    let logs = tempfile::tempdir().unwrap();
    let central = central(logs.path());
    let id_token = alice_id_token(&central);
    let mut cluster = kube_a(logs.path(), &central);
    let (_py, mcp) = bearer_guarded_server(logs.path(), &cluster.issuer);
    let cluster_token = exchanged(&cluster, &id_token);
    // The server has seen (and trusts) the key before the restart.
    assert_eq!(post_initialize(&mcp, Some(&cluster_token)).0, 200);

    cluster.restart();
    assert_eq!(cluster.stats()["exchanges_total"], 0);
    let (status, again) = cluster.exchange(FLOTILLA, &id_token, "central");
    assert_eq!(status, 200, "{again}");
    let renewed = again["access_token"].as_str().unwrap();
    assert_ne!(jwt_kid(renewed), jwt_kid(&cluster_token));
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
}

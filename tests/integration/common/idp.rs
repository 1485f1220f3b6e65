//! OpenID provider test peers for the SSO tests: starts
//! tests/peers/oidc_provider.mjs as the central IdP or as a cluster's Dex
//! (RFC 8693 token exchange), drives the login like a headless browser and
//! offers small OAuth helpers (PKCE, JWT claims, token requests).
//!
//! All HTTP here is blocking (reqwest::blocking) but runs on its own thread,
//! so every function is safe to call from inside a tokio test too (it blocks
//! that worker thread while it runs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::Digest as _;

use super::{Proc, peers};

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ID: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A running oidc_provider.mjs (central or cluster mode) on 127.0.0.1.
pub struct Idp {
    /// `http://127.0.0.1:<port>`, also the base of every endpoint.
    pub issuer: String,
    proc: Proc,
    name: String,
    args: Vec<String>,
    logs: PathBuf,
    port: u16,
    restarts: u32,
}

impl Idp {
    /// The central IdP: `clients` are `(client_id, secret, redirect_uris)`;
    /// an empty secret makes a public client (token_endpoint_auth_method
    /// none). Loopback redirect URIs match on any port.
    pub fn central(logs: &Path, clients: &[(&str, &str, &[&str])], id_token_ttl: u64) -> Idp {
        Idp::central_with(logs, clients, id_token_ttl, &[])
    }

    /// [`Idp::central`] whose users in `groups` (`user=g1,g2`) get a
    /// `groups` claim.
    pub fn central_with(
        logs: &Path,
        clients: &[(&str, &str, &[&str])],
        id_token_ttl: u64,
        groups: &[&str],
    ) -> Idp {
        let mut args = vec![
            "--mode".to_string(),
            "central".to_string(),
            "--id-token-ttl".to_string(),
            id_token_ttl.to_string(),
        ];
        for (id, secret, redirects) in clients {
            args.push("--client".to_string());
            args.push(format!("{id}:{secret}:{}", redirects.join(",")));
        }
        for spec in groups {
            args.extend(["--groups".to_string(), spec.to_string()]);
        }
        Idp::start(logs, "idp-central", args)
    }

    /// A cluster's Dex exchanging subject tokens of `central_issuer` for
    /// tokens with `aud` = `audience` (empty: the requesting client id) that
    /// expire after `token_ttl` s; `claimed_ttl` is reported as `expires_in`
    /// instead when given. `clients` are `(client_id, secret)` (Basic auth).
    pub fn cluster(
        logs: &Path,
        name: &str,
        central_issuer: &str,
        clients: &[(&str, &str)],
        audience: &str,
        token_ttl: u64,
        claimed_ttl: Option<u64>,
    ) -> Idp {
        let mut args = vec![
            "--mode".to_string(),
            "cluster".to_string(),
            "--central-issuer".to_string(),
            central_issuer.to_string(),
            "--token-ttl".to_string(),
            token_ttl.to_string(),
        ];
        if !audience.is_empty() {
            args.extend(["--audience".to_string(), audience.to_string()]);
        }
        if let Some(ttl) = claimed_ttl {
            args.extend(["--claimed-ttl".to_string(), ttl.to_string()]);
        }
        for (id, secret) in clients {
            args.extend(["--client".to_string(), format!("{id}:{secret}")]);
        }
        Idp::start(logs, &format!("idp-{name}"), args)
    }

    /// Starts oidc_provider.mjs with any arguments (all but `--port`), e.g.
    /// `--connector` or `--subject-audience`; the log is `<logs>/<name>.log`.
    pub fn start(logs: &Path, name: &str, args: Vec<String>) -> Idp {
        let (proc, issuer) = spawn(logs, name, &args, 0);
        let port = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in the READY line");
        Idp {
            issuer,
            proc,
            name: name.to_string(),
            args,
            logs: logs.to_path_buf(),
            port,
            restarts: 0,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `<issuer>/token` (oidc-provider's default token endpoint path).
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// `GET /test/stats`. Central: `{"authorizations": {sub: n}, "logins":
    /// {sub: n}, "code_grants": {sub: n}, "refresh_grants": {sub: n},
    /// "token_errors": {error: n}}`. Cluster: `{"exchanges": {"sub|client":
    /// n}, "exchanges_total": n, "rejected_total": n, "rejected": {error: n}}`.
    pub fn stats(&self) -> Value {
        let url = format!("{}/test/stats", self.issuer);
        off_runtime(move || {
            http()
                .get(&url)
                .send()
                .and_then(|r| r.error_for_status())
                .and_then(|r| r.json::<Value>())
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        })
    }

    /// `POST /test/reset`: zeroes the counters.
    pub fn reset(&self) {
        let url = format!("{}/test/reset", self.issuer);
        off_runtime(move || {
            http()
                .post(&url)
                .send()
                .and_then(|r| r.error_for_status())
                .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        })
    }

    /// Stops the provider (SIGTERM, then SIGKILL). [`Idp::restart`] binds its
    /// port again (the issuer names it); nothing holds the port in between,
    /// so a process binding port 0 meanwhile could, rarely, take it.
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Starts the provider again on the same port (same issuer). It has a new
    /// signing key and has forgotten every code, token, session and counter.
    pub fn restart(&mut self) {
        self.proc.stop();
        self.restarts += 1;
        let name = format!("{}-restart{}", self.name, self.restarts);
        let (proc, issuer) = spawn(&self.logs, &name, &self.args, self.port);
        assert_eq!(issuer, self.issuer, "restarted provider has another issuer");
        self.proc = proc;
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// Central: the authorization URL for an auth code + PKCE S256 request.
    pub fn authorize_url(
        &self,
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
        state: &str,
        code_challenge: &str,
    ) -> String {
        let mut url = url::Url::parse(&format!("{}/auth", self.issuer)).expect("issuer URL");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", scope)
            .append_pair("state", state)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        url.to_string()
    }

    /// POSTs `form` to the token endpoint, with HTTP Basic client
    /// authentication when `basic` is given; returns (status, JSON body).
    pub fn token_request(
        &self,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        token_request(&self.token_endpoint(), basic, form)
    }

    /// Cluster: an RFC 8693 exchange the way Dex expects it (Basic auth,
    /// `connector_id`, `subject_token_type` id_token); returns (status, body).
    pub fn exchange(
        &self,
        client: (&str, &str),
        subject_token: &str,
        connector_id: &str,
    ) -> (u16, Value) {
        self.token_request(
            Some(client),
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", subject_token),
                ("subject_token_type", TOKEN_TYPE_ID),
                ("connector_id", connector_id),
                ("scope", "openid profile email"),
            ],
        )
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.proc.log_text());
        }
    }
}

fn spawn(logs: &Path, name: &str, args: &[String], port: u16) -> (Proc, String) {
    let p = peers();
    let mut cmd = Command::new(p.get("NODE22"));
    cmd.arg(p.get("OIDC_PROVIDER_JS"))
        .arg("--port")
        .arg(port.to_string())
        .args(args)
        .env("NODE_NO_WARNINGS", "1");
    let proc = Proc::spawn(name, cmd, logs);
    let line = proc.wait_line("READY ", Duration::from_secs(30));
    let issuer = line.trim_start_matches("READY ").trim().to_string();
    (proc, issuer)
}

/// POSTs a form to a token endpoint; returns (status, JSON body or Null).
pub fn token_request(
    endpoint: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let endpoint = endpoint.to_string();
    let basic = basic.map(|(u, p)| (u.to_string(), p.to_string()));
    let form: Vec<(String, String)> = form
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    off_runtime(move || {
        let mut request = http().post(&endpoint).form(&form);
        if let Some((user, password)) = basic {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .unwrap_or_else(|e| panic!("POST {endpoint}: {e}"));
        let status = response.status().as_u16();
        let body = response.text().unwrap_or_default();
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    })
}

/// A headless browser login. Follows `authorize_url` (through the gateway's
/// `/oauth/authorize`, the provider's `/auth`, …) with a fresh cookie jar,
/// following redirects itself (at most 20 hops). A 200 page holding the
/// provider's login form (`<input name=login>`) is answered by POSTing
/// `login=<username>` to the form's action (login and consent in one step).
/// It stops at the first URL that starts with `redirect_prefix` (typically
/// the client's redirect_uri): that URL is fetched once, errors ignored (so a
/// CLI's loopback listener receives it), and returned with its `code` and
/// `state`. Any other status, page or too many hops panics with the details.
///
/// If the `redirect_prefix` URL is served by the calling test itself on a
/// current-thread tokio runtime, that server cannot answer while this blocks;
/// use a multi-thread runtime (the final GET times out after 5 s regardless).
pub fn browser_login(authorize_url: &str, username: &str, redirect_prefix: &str) -> String {
    let authorize_url = authorize_url.to_string();
    let username = username.to_string();
    let redirect_prefix = redirect_prefix.to_string();
    off_runtime(move || browse(&authorize_url, &username, &redirect_prefix))
}

fn browse(authorize_url: &str, username: &str, redirect_prefix: &str) -> String {
    let browser = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("browser client");
    let mut url = url::Url::parse(authorize_url)
        .unwrap_or_else(|e| panic!("browser_login: bad authorize URL {authorize_url}: {e}"));
    let mut post_login = false;
    let mut trail = Vec::new();
    for _ in 0..20 {
        if url.as_str().starts_with(redirect_prefix) {
            let _ = browser
                .get(url.clone())
                .timeout(Duration::from_secs(5))
                .send();
            return url.to_string();
        }
        trail.push(format!(
            "{} {}",
            if post_login { "POST" } else { "GET" },
            url
        ));
        let request = if std::mem::take(&mut post_login) {
            browser.post(url.clone()).form(&[("login", username)])
        } else {
            browser.get(url.clone())
        };
        let response = request
            .send()
            .unwrap_or_else(|e| panic!("browser_login: {e}\ntrail:\n{}", trail.join("\n")));
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or_else(|| panic!("browser_login: {status} without Location at {url}"))
                .to_string();
            url = url
                .join(&location)
                .unwrap_or_else(|e| panic!("browser_login: bad Location {location}: {e}"));
            continue;
        }
        let body = response.text().unwrap_or_default();
        if status == reqwest::StatusCode::OK
            && let Some(action) = login_form_action(&body)
        {
            url = url
                .join(&action)
                .unwrap_or_else(|e| panic!("browser_login: bad form action {action}: {e}"));
            post_login = true;
            continue;
        }
        panic!(
            "browser_login: unexpected {status} at {url} (waiting for {redirect_prefix}):\n{body}\ntrail:\n{}",
            trail.join("\n")
        );
    }
    panic!("browser_login: more than 20 hops:\n{}", trail.join("\n"));
}

/// The `action` of a page's form that has an `<input name=login>`.
fn login_form_action(html: &str) -> Option<String> {
    if !html.contains("name=login") && !html.contains("name=\"login\"") {
        return None;
    }
    let form = &html[html.find("<form")?..];
    let form = &form[..form.find('>')?];
    let rest = &form[form.find("action=")? + "action=".len()..];
    let action = match rest.chars().next()? {
        q @ ('"' | '\'') => rest[1..].split(q).next()?,
        _ => rest.split([' ', '>']).next()?,
    };
    Some(action.replace("&amp;", "&"))
}

/// A PKCE pair: (code_verifier, S256 code_challenge).
pub fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The payload of a JWT (no signature check).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {} chars", token.len()));
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

/// The first value of query parameter `name` in `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// Runs blocking reqwest work on a plain thread (reqwest::blocking panics on
/// a tokio worker thread), re-raising its panic here.
fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(work)
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Tokens the gateway issued to an MCP client after a login.
pub struct Login {
    pub access_token: String,
    pub refresh_token: String,
    pub client_id: String,
}

pub const TEST_REDIRECT: &str = "http://127.0.0.1:9/callback";

/// A whole MCP-client login: dynamic registration, PKCE, the browser at the
/// provider, and the code redeemed at the gateway's token endpoint.
pub fn gateway_login(base: &str, user: &str) -> Login {
    let registered: Value = blocking_post_json(
        &format!("{base}/oauth/register"),
        serde_json::json!({
            "client_name": "sso tests",
            "redirect_uris": [TEST_REDIRECT],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
        }),
    );
    let client_id = registered["client_id"]
        .as_str()
        .unwrap_or_else(|| panic!("registration: {registered}"))
        .to_string();
    login_as_client(base, &client_id, user)
}

/// The login of an already-known client (registered, or identified by a
/// client ID metadata document): PKCE, the browser at the provider, and the
/// code redeemed at the gateway's token endpoint.
pub fn login_as_client(base: &str, client_id: &str, user: &str) -> Login {
    let client_id = client_id.to_string();
    let (verifier, challenge) = pkce();
    let mut authorize = url::Url::parse(&format!("{base}/oauth/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", TEST_REDIRECT)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "st-42")
        .append_pair("resource", &format!("{base}/mcp"));
    let landed = browser_login(authorize.as_str(), user, TEST_REDIRECT);
    assert_eq!(query_param(&landed, "state").as_deref(), Some("st-42"));
    let code = query_param(&landed, "code").unwrap_or_else(|| panic!("no code in {landed}"));
    let (status, body) = token_request(
        &format!("{base}/oauth/token"),
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", TEST_REDIRECT),
            ("client_id", &client_id),
            ("code_verifier", &verifier),
        ],
    );
    assert_eq!(status, 200, "token endpoint: {body}");
    Login {
        access_token: body["access_token"].as_str().unwrap().to_string(),
        refresh_token: body["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        client_id,
    }
}

pub fn blocking_post_json(url: &str, body: Value) -> Value {
    let url = url.to_string();
    std::thread::spawn(move || {
        let response = reqwest::blocking::Client::new()
            .post(&url)
            .json(&body)
            .send()
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        response.json::<Value>().unwrap_or(Value::Null)
    })
    .join()
    .unwrap()
}

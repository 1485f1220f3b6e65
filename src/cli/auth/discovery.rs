//! Finding a gateway's authorization server, as an MCP client does: the
//! tokenless request's 401 names the protected resource metadata in its
//! `WWW-Authenticate` challenge (RFC 9728 §5.1; else the well-known URLs of
//! §3.1), which names the authorization server, whose metadata (RFC 8414, else
//! OpenID Connect discovery) gives the endpoints and the PKCE methods.

use anyhow::Context as _;
use http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

/// RFC 9728 protected resource metadata: the fields the CLI uses.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct ProtectedResourceMetadata {
    pub resource: String,
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
}

/// RFC 8414 authorization server metadata: the fields the CLI uses.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct AuthorizationServerMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    /// RFC 7009, where `flotilla auth logout` ends the login.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    /// RFC 9207: the redirect carries `iss`.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// What discovery found out about an endpoint.
#[derive(Debug)]
pub(super) enum Discovery {
    /// The gateway answered without asking for a token and publishes no
    /// protected resource metadata: it needs no login.
    Open,
    Protected(AuthServer),
}

/// The authorization server to log in at, for a resource.
#[derive(Debug)]
pub(super) struct AuthServer {
    /// The resource identifier from the metadata (the RFC 8707 `resource`).
    pub resource: String,
    /// Scopes to ask for: the challenge's `scope`, else the metadata's
    /// `scopes_supported`; none when neither says.
    pub scope: Option<String>,
    pub metadata: AuthorizationServerMetadata,
}

/// One challenge of a `WWW-Authenticate` header (RFC 9110 §11.6.1).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Challenge {
    pub scheme: String,
    /// Parameter names lower-cased, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// What a `Bearer` challenge tells an MCP client.
#[derive(Debug, Default, PartialEq)]
pub(super) struct BearerHints {
    pub resource_metadata: Option<String>,
    pub scope: Option<String>,
}

/// The first `Bearer` challenge's hints across all `WWW-Authenticate` values.
pub(super) fn bearer_hints<'a>(header_values: impl IntoIterator<Item = &'a str>) -> BearerHints {
    header_values
        .into_iter()
        .flat_map(parse_challenges)
        .find(|challenge| challenge.scheme.eq_ignore_ascii_case("bearer"))
        .map(|bearer| BearerHints {
            resource_metadata: bearer.param("resource_metadata").map(str::to_string),
            scope: bearer
                .param("scope")
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string),
        })
        .unwrap_or_default()
}

/// Parses a `WWW-Authenticate` value: challenges separated by commas, each a
/// scheme followed by a token68 or by comma-separated `name=value` params
/// (token or quoted-string). Malformed parts are skipped, never fatal.
pub(super) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut input = Scanner { rest: header };
    let mut challenges = Vec::new();
    loop {
        input.skip_while(|c| c == ',' || is_space(c));
        if input.rest.is_empty() {
            break;
        }
        let scheme = input.token();
        if scheme.is_empty() {
            input.skip_while(|c| c != ',');
            continue;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_string(),
            params: Vec::new(),
        };
        loop {
            let before = input.rest;
            let separators = input.skip_while(|c| c == ',' || is_space(c));
            let name = input.token();
            if name.is_empty() {
                if input.rest.is_empty() {
                    break;
                }
                // Junk (or a token68 such as `a/b+c`): skip to the next comma.
                input.skip_while(|c| c != ',');
                continue;
            }
            input.skip_while(is_space);
            let first_after_scheme = challenge.params.is_empty() && !separators.contains(',');
            if input.eat('=') {
                input.skip_while(is_space);
                if first_after_scheme && matches!(input.peek(), None | Some('=' | ',')) {
                    // A token68 ending in `=` padding.
                    input.skip_while(|c| c == '=');
                    break;
                }
                let value = if input.peek() == Some('"') {
                    input.quoted()
                } else {
                    // A token by the grammar; taken up to the next comma or
                    // space, as servers send bare URLs too.
                    input.skip_while(|c| c != ',' && !is_space(c)).to_string()
                };
                challenge.params.push((name.to_ascii_lowercase(), value));
            } else if first_after_scheme {
                // A token68 without padding; it ends the challenge.
                break;
            } else {
                // A bare token after a comma starts the next challenge.
                input.rest = before;
                break;
            }
        }
        challenges.push(challenge);
    }
    challenges
}

fn is_space(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

struct Scanner<'a> {
    rest: &'a str,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    /// Consumes the longest prefix whose chars satisfy `keep`; returns it.
    fn skip_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let end = self
            .rest
            .char_indices()
            .find(|&(_, c)| !keep(c))
            .map_or(self.rest.len(), |(i, _)| i);
        let (taken, rest) = self.rest.split_at(end);
        self.rest = rest;
        taken
    }

    fn token(&mut self) -> &'a str {
        self.skip_while(is_tchar)
    }

    fn eat(&mut self, expected: char) -> bool {
        match self.rest.strip_prefix(expected) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// A quoted-string at the cursor, unescaped; an unterminated one runs to the end.
    fn quoted(&mut self) -> String {
        let mut value = String::new();
        let mut chars = self.rest.char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return value;
                }
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                c => value.push(c),
            }
        }
        self.rest = "";
        value
    }
}

/// `base` with `path` as its path, and no query or fragment.
fn with_path(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    url.set_path(path);
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// RFC 9728 §3.1: the well-known suffix goes between the host and the path
/// (`https://h/mcp` → `https://h/.well-known/oauth-protected-resource/mcp`);
/// the origin-level document follows as the fallback MCP clients use.
pub(super) fn protected_resource_metadata_urls(resource: &Url) -> Vec<Url> {
    const SUFFIX: &str = "/.well-known/oauth-protected-resource";
    let path = resource.path().trim_end_matches('/');
    let mut urls = Vec::new();
    if !path.is_empty() {
        urls.push(with_path(resource, &format!("{SUFFIX}{path}")));
    }
    urls.push(with_path(resource, SUFFIX));
    urls
}

/// RFC 8414 §3.1 path insertion, then OpenID Connect discovery (inserted,
/// then appended), in the order the MCP authorization spec gives.
pub(super) fn authorization_server_metadata_urls(issuer: &Url) -> Vec<Url> {
    const OAUTH: &str = "/.well-known/oauth-authorization-server";
    const OIDC: &str = "/.well-known/openid-configuration";
    let path = issuer.path().trim_end_matches('/');
    if path.is_empty() {
        vec![with_path(issuer, OAUTH), with_path(issuer, OIDC)]
    } else {
        vec![
            with_path(issuer, &format!("{OAUTH}{path}")),
            with_path(issuer, &format!("{OIDC}{path}")),
            with_path(issuer, &format!("{path}{OIDC}")),
        ]
    }
}

/// True when `resource` (from the metadata) names `endpoint` or a prefix of
/// it on the same origin: RFC 9728 §3.3 forbids using metadata published
/// for some other resource.
pub(super) fn resource_covers(resource: &str, endpoint: &Url) -> bool {
    let Ok(resource) = Url::parse(resource) else {
        return false;
    };
    let same_origin = resource.scheme() == endpoint.scheme()
        && resource.host_str() == endpoint.host_str()
        && resource.port_or_known_default() == endpoint.port_or_known_default();
    let prefix = resource.path().trim_end_matches('/');
    let path = endpoint.path().trim_end_matches('/');
    same_origin && (path == prefix || path.starts_with(&format!("{prefix}/")))
}

/// Issuer identifiers compare exactly, but for a trailing slash.
fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Walks from the endpoint to its authorization server's metadata.
pub(super) async fn discover(http: &reqwest::Client, endpoint: &Url) -> anyhow::Result<Discovery> {
    let probe = http
        .get(endpoint.clone())
        .header(http::header::ACCEPT, "application/json, text/event-stream")
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach the gateway at {endpoint}; is it running, and is --endpoint right?"
            )
        })?;
    let asks_for_login = probe.status() == StatusCode::UNAUTHORIZED;
    let hints = bearer_hints(
        probe
            .headers()
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok()),
    );
    drop(probe);
    tracing::debug!(%endpoint, asks_for_login, ?hints, "probed the gateway");

    let mut candidates = Vec::new();
    if let Some(named) = &hints.resource_metadata {
        let url = endpoint.join(named).with_context(|| {
            format!("the gateway's WWW-Authenticate names resource_metadata {named:?}, which is not a URL")
        })?;
        candidates.push(url);
    }
    candidates.extend(protected_resource_metadata_urls(endpoint));
    let Some(resource_metadata) =
        first_json::<ProtectedResourceMetadata>(http, &candidates).await?
    else {
        if asks_for_login {
            anyhow::bail!(
                "the gateway at {endpoint} asks for a login but publishes no protected resource metadata (tried {}); is this a flotilla gateway with auth enabled?",
                list(&candidates)
            );
        }
        return Ok(Discovery::Open);
    };
    anyhow::ensure!(
        resource_covers(&resource_metadata.resource, endpoint),
        "the gateway's metadata is for the resource {}, not {endpoint}; log in with --endpoint {}",
        resource_metadata.resource,
        resource_metadata.resource
    );
    let issuer = resource_metadata
        .authorization_servers
        .first()
        .with_context(|| {
            format!("the gateway at {endpoint} names no authorization server in its metadata")
        })?;
    let issuer_url = Url::parse(issuer)
        .with_context(|| format!("the gateway's authorization server {issuer:?} is not a URL"))?;
    let candidates = authorization_server_metadata_urls(&issuer_url);
    let metadata = first_json::<AuthorizationServerMetadata>(http, &candidates)
        .await?
        .with_context(|| {
            format!(
                "the authorization server {issuer} publishes no metadata (tried {})",
                list(&candidates)
            )
        })?;
    anyhow::ensure!(
        same_issuer(&metadata.issuer, issuer),
        "the authorization server {issuer} calls itself {} in its metadata; refusing to log in there (RFC 8414 §3.3)",
        metadata.issuer
    );
    anyhow::ensure!(
        metadata
            .code_challenge_methods_supported
            .iter()
            .any(|method| method == "S256"),
        "the authorization server {issuer} does not offer PKCE with S256, which flotilla requires"
    );
    let scope = hints.scope.or_else(|| {
        (!resource_metadata.scopes_supported.is_empty())
            .then(|| resource_metadata.scopes_supported.join(" "))
    });
    tracing::debug!(%issuer, resource = %resource_metadata.resource, ?scope, "found the authorization server");
    Ok(Discovery::Protected(AuthServer {
        resource: resource_metadata.resource,
        scope,
        metadata,
    }))
}

/// The metadata `issuer` publishes (RFC 8414), checked to name itself.
pub(super) async fn authorization_server_metadata(
    http: &reqwest::Client,
    issuer: &str,
) -> anyhow::Result<AuthorizationServerMetadata> {
    let issuer_url =
        Url::parse(issuer).with_context(|| format!("the stored issuer {issuer:?} is not a URL"))?;
    let candidates = authorization_server_metadata_urls(&issuer_url);
    let metadata = first_json::<AuthorizationServerMetadata>(http, &candidates)
        .await?
        .with_context(|| format!("{issuer} publishes no authorization server metadata"))?;
    anyhow::ensure!(
        same_issuer(&metadata.issuer, issuer),
        "the authorization server {issuer} calls itself {} in its metadata",
        metadata.issuer
    );
    Ok(metadata)
}

/// The first candidate that answers 200 with the expected JSON; `None` when
/// none does. Connection failures are errors (the next URL is on the same host).
async fn first_json<T: DeserializeOwned>(
    http: &reqwest::Client,
    candidates: &[Url],
) -> anyhow::Result<Option<T>> {
    for url in candidates {
        let response = http
            .get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .with_context(|| format!("cannot fetch {url}"))?;
        if !response.status().is_success() {
            tracing::debug!(%url, status = %response.status(), "no metadata here");
            continue;
        }
        match response.json::<T>().await {
            Ok(document) => return Ok(Some(document)),
            Err(error) => tracing::debug!(%url, %error, "unusable metadata"),
        }
    }
    Ok(None)
}

fn list(urls: &[Url]) -> String {
    urls.iter().map(Url::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints(values: &[&str]) -> BearerHints {
        bearer_hints(values.iter().copied())
    }

    #[test]
    fn resource_metadata_comes_from_a_quoted_param() {
        assert_eq!(
            hints(&[
                r#"Bearer resource_metadata="https://gw/.well-known/oauth-protected-resource/mcp""#
            ]),
            BearerHints {
                resource_metadata: Some(
                    "https://gw/.well-known/oauth-protected-resource/mcp".into()
                ),
                scope: None,
            }
        );
    }

    #[test]
    fn resource_metadata_is_found_among_several_params_in_any_case() {
        let found = hints(&[
            r#"Bearer realm="flotilla", error="invalid_token", error_description="no token, \"really\"", Resource_Metadata=https://gw/prm, scope="openid profile""#,
        ]);
        assert_eq!(found.resource_metadata.as_deref(), Some("https://gw/prm"));
        assert_eq!(found.scope.as_deref(), Some("openid profile"));
    }

    #[test]
    fn resource_metadata_is_taken_from_the_bearer_challenge_among_several() {
        let one_header = r#"Basic realm="x", DPoP algs="ES256 PS256", bearer error="invalid_request", resource_metadata="https://gw/prm""#;
        assert_eq!(
            hints(&[one_header]).resource_metadata.as_deref(),
            Some("https://gw/prm")
        );
        let token68_first = r#"Negotiate abc+/def==, Bearer resource_metadata="https://gw/prm2""#;
        assert_eq!(
            hints(&[token68_first]).resource_metadata.as_deref(),
            Some("https://gw/prm2")
        );
        let separate_headers = [
            r#"Basic realm="x""#,
            r#"Bearer resource_metadata="https://gw/prm3""#,
        ];
        assert_eq!(
            hints(&separate_headers).resource_metadata.as_deref(),
            Some("https://gw/prm3")
        );
    }

    #[test]
    fn challenges_parse_into_schemes_and_params() {
        assert_eq!(
            parse_challenges(r#"Basic realm="a, b", Bearer , Digest nonce=1,qop="auth""#),
            vec![
                Challenge {
                    scheme: "Basic".into(),
                    params: vec![("realm".into(), "a, b".into())],
                },
                Challenge {
                    scheme: "Bearer".into(),
                    params: vec![],
                },
                Challenge {
                    scheme: "Digest".into(),
                    params: vec![("nonce".into(), "1".into()), ("qop".into(), "auth".into())],
                },
            ]
        );
    }

    #[test]
    fn malformed_challenges_yield_nothing_rather_than_failing() {
        for junk in [
            "",
            ",,,",
            "\"",
            "Bearer resource_metadata=\"unterminated",
            "=== , @@@",
            "Bearer =",
        ] {
            let _ = parse_challenges(junk);
        }
        assert_eq!(
            hints(&["Bearer resource_metadata=\"https://gw/p"])
                .resource_metadata
                .as_deref(),
            Some("https://gw/p")
        );
        assert_eq!(hints(&["Basic realm=x"]), BearerHints::default());
    }

    #[test]
    fn protected_resource_metadata_urls_insert_the_well_known_path() {
        let table = [
            (
                "https://h/mcp",
                vec![
                    "https://h/.well-known/oauth-protected-resource/mcp",
                    "https://h/.well-known/oauth-protected-resource",
                ],
            ),
            (
                "http://127.0.0.1:8080/team/mcp/?q=1",
                vec![
                    "http://127.0.0.1:8080/.well-known/oauth-protected-resource/team/mcp",
                    "http://127.0.0.1:8080/.well-known/oauth-protected-resource",
                ],
            ),
            (
                "https://h/",
                vec!["https://h/.well-known/oauth-protected-resource"],
            ),
        ];
        for (resource, expected) in table {
            let urls = protected_resource_metadata_urls(&Url::parse(resource).unwrap());
            let urls: Vec<_> = urls.iter().map(Url::as_str).collect();
            assert_eq!(urls, expected, "{resource}");
        }
    }

    #[test]
    fn authorization_server_metadata_urls_try_oauth_then_openid() {
        let table = [
            (
                "https://gw.example",
                vec![
                    "https://gw.example/.well-known/oauth-authorization-server",
                    "https://gw.example/.well-known/openid-configuration",
                ],
            ),
            (
                "https://idp.example/realms/ops/",
                vec![
                    "https://idp.example/.well-known/oauth-authorization-server/realms/ops",
                    "https://idp.example/.well-known/openid-configuration/realms/ops",
                    "https://idp.example/realms/ops/.well-known/openid-configuration",
                ],
            ),
        ];
        for (issuer, expected) in table {
            let urls = authorization_server_metadata_urls(&Url::parse(issuer).unwrap());
            let urls: Vec<_> = urls.iter().map(Url::as_str).collect();
            assert_eq!(urls, expected, "{issuer}");
        }
    }

    #[test]
    fn metadata_must_be_for_the_endpoint_or_a_prefix_of_it() {
        let endpoint = Url::parse("http://127.0.0.1:8080/mcp").unwrap();
        assert!(resource_covers("http://127.0.0.1:8080/mcp", &endpoint));
        assert!(resource_covers("http://127.0.0.1:8080/mcp/", &endpoint));
        assert!(resource_covers("http://127.0.0.1:8080", &endpoint));
        assert!(resource_covers("HTTP://127.0.0.1:8080/mcp", &endpoint));
        assert!(!resource_covers("http://127.0.0.1:8081/mcp", &endpoint));
        assert!(!resource_covers("http://127.0.0.1:8080/mc", &endpoint));
        assert!(!resource_covers("https://127.0.0.1:8080/mcp", &endpoint));
        assert!(!resource_covers("not a url", &endpoint));
        assert!(resource_covers(
            "https://gw.example/mcp",
            &Url::parse("https://GW.example:443/mcp").unwrap()
        ));
    }
}

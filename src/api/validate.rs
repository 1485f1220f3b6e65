//! Semantic validation of an MCPServer: what serde cannot check (required
//! fields per transport, name syntax). Every finding names the field to fix.

use super::{MCPServerSpec, ServerType};

/// One problem in a spec, with the JSON path of the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn err(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Characters allowed in names that become part of exposed tool names.
pub(super) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// `type: agent`: an agent name, exactly one way for it to prove it, and
/// nothing of the other transports (the agent's own manifest says how it
/// reaches the server).
fn validate_agent(spec: &MCPServerSpec, errors: &mut Vec<ValidationError>) {
    let Some(agent) = &spec.agent else {
        errors.push(err(
            "spec.agent",
            "is required for type agent (the agent's name and its credentialFrom or serviceAccount)",
        ));
        return;
    };
    if agent.name.is_empty() || agent.name.len() > 253 || !agent.name.chars().all(is_name_char) {
        errors.push(err(
            "spec.agent.name",
            "is required: at most 253 characters of [A-Za-z0-9._-]",
        ));
    }
    if let Some(server) = &agent.server
        && (server.is_empty() || !server.chars().all(is_name_char))
    {
        errors.push(err("spec.agent.server", "may contain only [A-Za-z0-9._-]"));
    }
    match (&agent.credential_from, &agent.service_account) {
        (None, None) | (Some(_), Some(_)) => errors.push(err(
            "spec.agent",
            "needs exactly one of credentialFrom (a Secret) and serviceAccount (the cluster's token issuer)",
        )),
        (Some(from), None) if from.secret_name.is_empty() || from.key.is_empty() => errors.push(
            err("spec.agent.credentialFrom", "secretName and key are required"),
        ),
        (None, Some(account)) => {
            match url::Url::parse(&account.issuer) {
                Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
                _ => errors.push(err(
                    "spec.agent.serviceAccount.issuer",
                    "must be the issuer's http(s) URL",
                )),
            }
            if !account.subject.starts_with("system:serviceaccount:") {
                errors.push(err(
                    "spec.agent.serviceAccount.subject",
                    "must be system:serviceaccount:<namespace>:<name>",
                ));
            }
        }
        _ => {}
    }
    for (field, set) in [
        ("spec.url", spec.url.is_some()),
        ("spec.command", spec.command.is_some()),
        (
            "spec.headers",
            !spec.headers.is_empty() || !spec.headers_from.is_empty(),
        ),
    ] {
        if set {
            errors.push(err(
                field,
                "is not used with type agent (the agent's own manifest says how it reaches the server)",
            ));
        }
    }
}

/// Checks `metadata.name` and the spec; returns every problem found.
pub fn validate(name: &str, spec: &MCPServerSpec) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    if name.is_empty() {
        errors.push(err("metadata.name", "is required"));
    } else if name.len() > 253 || !name.chars().all(is_name_char) {
        errors.push(err(
            "metadata.name",
            "must be at most 253 characters of [A-Za-z0-9._-]",
        ));
    }
    match spec.server_type {
        ServerType::StreamableHttp | ServerType::Sse => match spec.url.as_deref() {
            None | Some("") => errors.push(err(
                "spec.url",
                format!("is required for type {}", spec.server_type.as_str()),
            )),
            Some(raw) => match url::Url::parse(raw) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                Ok(u) => errors.push(err(
                    "spec.url",
                    format!("scheme {:?} is not http or https", u.scheme()),
                )),
                Err(e) => errors.push(err("spec.url", format!("is not a valid URL: {e}"))),
            },
        },
        ServerType::Stdio => {
            if spec.command.as_deref().unwrap_or("").is_empty() {
                errors.push(err("spec.command", "is required for type stdio"));
            }
        }
        ServerType::Agent => validate_agent(spec, &mut errors),
    }
    if spec.agent.is_some() && spec.server_type != ServerType::Agent {
        errors.push(err("spec.agent", "is only used with type agent"));
    }
    if spec.sso_mode().is_some() && spec.server_type != ServerType::StreamableHttp {
        errors.push(err(
            "spec.auth",
            "forwardToken and tokenExchange need type streamable-http (users' tokens travel in HTTP headers)",
        ));
    }
    if let Some(exchange) = spec.auth.as_ref().and_then(|a| a.token_exchange.as_ref())
        && exchange.enabled
    {
        match exchange.dex_token_endpoint.as_deref().map(url::Url::parse) {
            None => errors.push(err(
                "spec.auth.tokenExchange.dexTokenEndpoint",
                "is required when tokenExchange is enabled",
            )),
            Some(Err(e)) => errors.push(err(
                "spec.auth.tokenExchange.dexTokenEndpoint",
                format!("is not a valid URL: {e}"),
            )),
            Some(Ok(_)) => {}
        }
        if exchange.client_credentials_secret_ref.is_none() {
            errors.push(err(
                "spec.auth.tokenExchange.clientCredentialsSecretRef",
                "is required when tokenExchange is enabled (the client the gateway authenticates as at that Dex)",
            ));
        }
    }
    for (key, value) in &spec.headers {
        if http::HeaderName::from_bytes(key.as_bytes()).is_err() {
            errors.push(err(
                &format!("spec.headers.{key}"),
                "is not a valid HTTP header name",
            ));
        } else if http::HeaderValue::from_str(value).is_err() {
            errors.push(err(
                &format!("spec.headers.{key}"),
                "value contains characters not allowed in an HTTP header",
            ));
        }
        if key.eq_ignore_ascii_case("host") {
            errors.push(err(
                &format!("spec.headers.{key}"),
                "Host is derived from spec.url and cannot be set",
            ));
        }
    }
    for (i, from) in spec.headers_from.iter().enumerate() {
        let field = format!("spec.headersFrom[{i}]");
        if from.secret_name.is_empty() || from.key.is_empty() {
            errors.push(err(&field, "secretName and key are required"));
        }
        if http::HeaderName::from_bytes(from.header.as_bytes()).is_err()
            || from.header.eq_ignore_ascii_case("host")
        {
            errors.push(err(
                &format!("{field}.header"),
                "is not a header that can be set",
            ));
        }
    }
    if let Some(prefix) = &spec.tool_prefix
        && !prefix.chars().all(is_name_char)
    {
        errors.push(err("spec.toolPrefix", "may contain only [A-Za-z0-9._-]"));
    }
    if spec.timeout == Some(0) {
        errors.push(err("spec.timeout", "must be at least 1 second"));
    }
    if let Some(limits) = &spec.limits {
        validate_limits(limits, &mut errors);
    }
    if let Some(family) = &spec.family {
        if family.name.is_empty() || !family.name.chars().all(is_name_char) {
            errors.push(err(
                "spec.family.name",
                "is required and may contain only [A-Za-z0-9._-]",
            ));
        }
        if let Some(arg) = &family.instance_arg
            && (arg.is_empty() || !arg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            errors.push(err(
                "spec.family.instanceArg",
                "must be a non-empty identifier of [A-Za-z0-9_]",
            ));
        }
        if family.instance.as_deref() == Some("") {
            errors.push(err("spec.family.instance", "must not be empty when set"));
        }
        for (i, alias) in family.aliases.iter().enumerate() {
            if alias.trim().is_empty() || alias == "*" {
                errors.push(err(
                    &format!("spec.family.aliases[{i}]"),
                    "must be a non-empty name other than \"*\"",
                ));
            }
        }
    }
    errors
}

/// Bounds of `spec.limits`: (field, least, most, unit).
const LIMIT_BOUNDS: [(&str, u64, u64, &str); 5] = [
    ("maxConcurrency", 1, 10_000, "calls"),
    ("maxQueued", 0, 100_000, "calls"),
    ("queueTimeout", 1, 3_600, "seconds"),
    ("maxOutputBytes", 256, 64 * 1024 * 1024, "bytes"),
    ("callTimeout", 1, 86_400, "seconds"),
];

fn validate_limits(limits: &super::LimitsSpec, errors: &mut Vec<ValidationError>) {
    let values = [
        limits.max_concurrency.map(u64::from),
        limits.max_queued.map(u64::from),
        limits.queue_timeout,
        limits.max_output_bytes,
        limits.call_timeout,
    ];
    for ((name, least, most, unit), value) in LIMIT_BOUNDS.iter().zip(values) {
        if let Some(value) = value
            && !(*least..=*most).contains(&value)
        {
            errors.push(err(
                &format!("spec.limits.{name}"),
                format!("must be from {least} to {most} {unit}, not {value}"),
            ));
        }
    }
    if limits.max_concurrency.is_none() {
        for (name, set) in [
            ("maxQueued", limits.max_queued.is_some()),
            ("queueTimeout", limits.queue_timeout.is_some()),
        ] {
            if set {
                errors.push(err(
                    &format!("spec.limits.{name}"),
                    "has no effect without spec.limits.maxConcurrency (set it, or remove this field)",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str) -> MCPServerSpec {
        MCPServerSpec {
            url: Some(url.into()),
            ..Default::default()
        }
    }

    #[test]
    fn each_transport_names_its_missing_field() {
        let stdio = MCPServerSpec {
            server_type: ServerType::Stdio,
            ..Default::default()
        };
        assert_eq!(validate("a", &stdio)[0].field, "spec.command");
        assert_eq!(
            validate("a", &MCPServerSpec::default())[0].field,
            "spec.url"
        );
        assert!(validate("a", &http("http://127.0.0.1:1/mcp")).is_empty());
        assert_eq!(validate("a", &http("ftp://x"))[0].field, "spec.url");
    }

    #[test]
    fn bad_names_and_headers_are_reported_with_their_path() {
        let mut spec = http("http://x/mcp");
        spec.tool_prefix = Some("a b".into());
        spec.headers.insert("Host".into(), "evil".into());
        spec.headers.insert("bad header".into(), "v".into());
        let fields: Vec<_> = validate("ok", &spec).into_iter().map(|e| e.field).collect();
        assert!(fields.contains(&"spec.toolPrefix".to_string()));
        assert!(fields.contains(&"spec.headers.Host".to_string()));
        assert!(fields.contains(&"spec.headers.bad header".to_string()));
        assert_eq!(
            validate("no/slash", &http("http://x"))[0].field,
            "metadata.name"
        );
    }

    #[test]
    fn limits_out_of_range_are_named_with_their_bounds() {
        let with = |limits: crate::api::LimitsSpec| {
            let mut spec = http("http://x/mcp");
            spec.limits = Some(limits);
            validate("ok", &spec)
        };
        let sane = crate::api::LimitsSpec {
            max_concurrency: Some(4),
            max_queued: Some(0),
            queue_timeout: Some(10),
            max_output_bytes: Some(65_536),
            call_timeout: Some(120),
        };
        assert!(with(sane.clone()).is_empty());
        let zero = with(crate::api::LimitsSpec {
            max_concurrency: Some(0),
            call_timeout: Some(0),
            max_output_bytes: Some(10),
            ..sane.clone()
        });
        let fields: Vec<_> = zero.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.limits.maxConcurrency",
                "spec.limits.maxOutputBytes",
                "spec.limits.callTimeout"
            ]
        );
        assert!(
            zero[0].message.contains("from 1 to 10000 calls, not 0"),
            "{}",
            zero[0]
        );
        let absurd = with(crate::api::LimitsSpec {
            queue_timeout: Some(1_000_000),
            ..sane.clone()
        });
        assert_eq!(absurd[0].field, "spec.limits.queueTimeout");
        let orphan = with(crate::api::LimitsSpec {
            max_queued: Some(5),
            ..Default::default()
        });
        assert_eq!(orphan[0].field, "spec.limits.maxQueued");
        assert!(
            orphan[0].message.contains("maxConcurrency"),
            "{}",
            orphan[0]
        );
    }
}

//! From MCPServer objects (and the Secrets they reference) to the desired
//! fleet: a pure function, so its rules are tested without an API server.
//!
//! Bad input loses nothing: an object that fails to parse or validate, or
//! whose Secret is missing, is reported under its own name and keeps serving
//! its last good version. Secret values are resolved into [`SecretValue`]s,
//! which never print.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::DeserializeGuard;

use crate::api::{MCPServer, ToolPolicy, validate, validate_policy};
use crate::source::{
    ClientCredentials, DesiredFleet, DesiredPolicy, DesiredServer, ManifestProblem, SecretValue,
};

/// Finds a Secret by (namespace, name) in the gateway's Secret caches.
pub trait SecretLookup {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;

    /// Why Secrets in `namespace` cannot be read at all (e.g. no RoleBinding
    /// there), if that is so.
    fn unreadable(&self, _namespace: &str) -> Option<String> {
        None
    }
}

/// Where an object came from, for messages: `MCPServer team-a/cluster-a`.
pub fn origin_of(namespace: &str, name: &str) -> String {
    format!("MCPServer {namespace}/{name}")
}

/// Where a policy came from, for messages: `ToolPolicy team-a/prod-guard`.
pub fn policy_origin_of(namespace: &str, name: &str) -> String {
    format!("ToolPolicy {namespace}/{name}")
}

/// Reads one key of a Secret; the error names the Secret and key, never a value.
pub(crate) fn secret_key(
    secrets: &dyn SecretLookup,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<SecretValue, String> {
    let secret = secrets.secret(namespace, name).ok_or_else(|| {
        match secrets.unreadable(namespace) {
            Some(why) => format!("Secret {namespace}/{name} cannot be read: {why}"),
            None => format!("Secret {namespace}/{name} not found (or the gateway may not read Secrets in namespace {namespace})"),
        }
    })?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key:?}"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("Secret {namespace}/{name} key {key:?} is not UTF-8 text"))?;
    // A trailing newline (echo > file) is never part of a header value.
    Ok(SecretValue::new(
        text.trim_end_matches(['\n', '\r']).to_string(),
    ))
}

/// Resolves `spec.headersFrom` and `spec.auth.tokenExchange.clientCredentialsSecretRef`
/// against `secrets`; errors name the field, Secret and key, never a value.
pub fn resolve_secret_refs(
    spec: &crate::api::MCPServerSpec,
    namespace: &str,
    secrets: &dyn SecretLookup,
) -> Result<SecretRefs, String> {
    let mut secret_headers = std::collections::BTreeMap::new();
    for (i, from) in spec.headers_from.iter().enumerate() {
        let value = secret_key(secrets, namespace, &from.secret_name, &from.key)
            .map_err(|e| format!("spec.headersFrom[{i}]: {e}"))?;
        let value = match &from.prefix {
            Some(prefix) => SecretValue::new(format!("{prefix}{}", value.expose())),
            None => value,
        };
        secret_headers.insert(from.header.clone(), value);
    }
    let client_credentials = match spec
        .auth
        .as_ref()
        .and_then(|a| a.token_exchange.as_ref())
        .and_then(|t| t.client_credentials_secret_ref.as_ref())
    {
        None => None,
        Some(reference) => {
            let ns = reference
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_string());
            let field = "spec.auth.tokenExchange.clientCredentialsSecretRef";
            let id_key = reference.client_id_key.as_deref().unwrap_or("client-id");
            let secret_key_name = reference
                .client_secret_key
                .as_deref()
                .unwrap_or("client-secret");
            let client_id = secret_key(secrets, &ns, &reference.name, id_key)
                .map_err(|e| format!("{field}: {e}"))?;
            let client_secret = secret_key(secrets, &ns, &reference.name, secret_key_name)
                .map_err(|e| format!("{field}: {e}"))?;
            Some(ClientCredentials {
                client_id: client_id.expose().to_string(),
                client_secret,
            })
        }
    };
    let agent_credential = match spec.agent.as_ref().and_then(|a| a.credential_from.as_ref()) {
        None => None,
        Some(from) => Some(
            secret_key(secrets, namespace, &from.secret_name, &from.key)
                .map_err(|e| format!("spec.agent.credentialFrom: {e}"))?,
        ),
    };
    Ok(SecretRefs {
        headers: secret_headers,
        client_credentials,
        agent_credential,
    })
}

/// The Secret values an MCPServer's spec refers to, resolved.
#[derive(Default)]
pub struct SecretRefs {
    /// `spec.headersFrom`, by header name.
    pub headers: std::collections::BTreeMap<String, SecretValue>,
    /// `spec.auth.tokenExchange.clientCredentialsSecretRef`.
    pub client_credentials: Option<ClientCredentials>,
    /// `spec.agent.credentialFrom`.
    pub agent_credential: Option<SecretValue>,
}

impl SecretRefs {
    /// Puts the values on the server they were resolved for.
    pub fn apply_to(self, server: &mut DesiredServer) {
        server.secret_headers = self.headers;
        server.client_credentials = self.client_credentials;
        server.agent_credential = self.agent_credential;
    }
}

/// One valid object → a desired server, resolving its Secret references.
fn to_desired(server: &MCPServer, secrets: &dyn SecretLookup) -> Result<DesiredServer, String> {
    let name = server.name_any();
    let namespace = server.namespace().unwrap_or_else(|| "default".into());
    if let Some(error) = validate(&name, &server.spec).into_iter().next() {
        return Err(error.to_string());
    }
    let refs = resolve_secret_refs(&server.spec, &namespace, secrets)?;
    let mut desired = DesiredServer {
        origin: origin_of(&namespace, &name),
        labels: server.labels().clone(),
        generation: server.metadata.generation,
        spec: server.spec.clone(),
        secret_headers: Default::default(),
        client_credentials: None,
        agent_credential: None,
        namespace,
        name,
    };
    refs.apply_to(&mut desired);
    Ok(desired)
}

/// Builds the desired fleet from every object the gateway watches.
/// `last_good` remembers each server's last usable version by name.
pub fn desired_fleet(
    objects: &[Arc<DeserializeGuard<MCPServer>>],
    secrets: &dyn SecretLookup,
    last_good: &mut HashMap<String, DesiredServer>,
) -> DesiredFleet {
    let mut sorted: Vec<&Arc<DeserializeGuard<MCPServer>>> = objects.iter().collect();
    let key =
        |o: &&Arc<DeserializeGuard<MCPServer>>| (o.namespace().unwrap_or_default(), o.name_any());
    sorted.sort_by_key(key);
    let mut fleet = DesiredFleet::default();
    // Exposed names come from metadata.name, so a name is claimed once.
    let mut claimed: HashMap<String, String> = HashMap::new();
    for object in sorted {
        let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let origin = origin_of(&namespace, &name);
        if let Some(owner) = claimed.get(&name).filter(|owner| **owner != namespace) {
            fleet.problems.push(ManifestProblem {
                origin,
                server: None,
                policy: None,
                set: None,
                message: format!(
                    "metadata.name {name:?} is already used by {}; exposed names must be unique across namespaces",
                    origin_of(owner, &name)
                ),
            });
            continue;
        }
        claimed.insert(name.clone(), namespace.clone());
        let result = match &object.0 {
            Ok(server) => to_desired(server, secrets),
            Err(invalid) => Err(format!("invalid object: {}", invalid.error)),
        };
        match result {
            Ok(desired) => {
                last_good.insert(name.clone(), desired.clone());
                fleet.servers.insert(name, desired);
            }
            Err(message) => {
                if let Some(previous) = last_good.get(&name).filter(|p| p.namespace == namespace) {
                    fleet.servers.insert(name.clone(), previous.clone());
                }
                fleet.problems.push(ManifestProblem {
                    origin,
                    server: Some(name),
                    policy: None,
                    set: None,
                    message,
                });
            }
        }
    }
    // Deleted objects are forgotten.
    last_good.retain(|name, _| fleet.servers.contains_key(name));
    fleet
}

/// Adds every watched ToolPolicy to `fleet`: valid ones in force, broken
/// ones reported (keeping their last good rules, so a broken edit never
/// lifts a deny). `last_good` remembers each by `namespace/name`.
pub fn desired_policies(
    objects: &[Arc<DeserializeGuard<ToolPolicy>>],
    last_good: &mut HashMap<String, DesiredPolicy>,
    fleet: &mut DesiredFleet,
) {
    for object in objects {
        let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let key = format!("{namespace}/{name}");
        let origin = policy_origin_of(&namespace, &name);
        let result = match &object.0 {
            Ok(policy) => match validate_policy(&name, &policy.spec).into_iter().next() {
                None => Ok(DesiredPolicy {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    generation: policy.metadata.generation,
                    spec: policy.spec.clone(),
                    origin: origin.clone(),
                }),
                Some(error) => Err(error.to_string()),
            },
            Err(invalid) => Err(format!("invalid object: {}", invalid.error)),
        };
        match result {
            Ok(policy) => {
                last_good.insert(key.clone(), policy.clone());
                fleet.policies.insert(key, policy);
            }
            Err(message) => {
                if let Some(previous) = last_good.get(&key) {
                    fleet.policies.insert(key, previous.clone());
                }
                fleet.problems.push(ManifestProblem {
                    origin,
                    server: None,
                    policy: Some(name),
                    set: None,
                    message,
                });
            }
        }
    }
    // Deleted objects are forgotten.
    last_good.retain(|key, _| fleet.policies.contains_key(key));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    struct Secrets(Vec<Secret>);

    impl SecretLookup for Secrets {
        fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
            self.0
                .iter()
                .find(|s| {
                    s.metadata.namespace.as_deref() == Some(namespace)
                        && s.metadata.name.as_deref() == Some(name)
                })
                .cloned()
                .map(Arc::new)
        }
    }

    fn secret(ns: &str, name: &str, data: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        );
        s
    }

    fn object(ns: &str, yaml: &str) -> Arc<DeserializeGuard<MCPServer>> {
        let mut value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        value["metadata"]["namespace"] = ns.into();
        Arc::new(serde_json::from_value(value).unwrap())
    }

    const WITH_SECRET: &str = "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata: {name: a, generation: 2, labels: {env: prod}}\nspec:\n  url: http://x/mcp\n  headersFrom: [{secretName: creds, key: token, header: Authorization, prefix: 'Bearer '}]\n";

    #[test]
    fn secret_headers_are_resolved_with_their_prefix_and_never_printed() {
        let secrets = Secrets(vec![secret("team", "creds", &[("token", "s3cr3t\n")])]);
        let fleet = desired_fleet(
            &[object("team", WITH_SECRET)],
            &secrets,
            &mut HashMap::new(),
        );
        assert!(fleet.problems.is_empty(), "{:?}", fleet.problems);
        let server = &fleet.servers["a"];
        assert_eq!(
            server.secret_headers["Authorization"].expose(),
            "Bearer s3cr3t"
        );
        assert_eq!(server.generation, Some(2));
        assert_eq!(server.labels["env"], "prod");
        assert!(
            !format!("{server:?}").contains("s3cr3t"),
            "Debug never shows the value"
        );
    }

    #[test]
    fn a_missing_secret_is_reported_and_the_last_good_version_keeps_serving() {
        let good = Secrets(vec![secret("team", "creds", &[("token", "one")])]);
        let mut last_good = HashMap::new();
        desired_fleet(&[object("team", WITH_SECRET)], &good, &mut last_good);
        let fleet = desired_fleet(
            &[object("team", WITH_SECRET)],
            &Secrets(vec![]),
            &mut last_good,
        );
        assert_eq!(
            fleet.servers["a"].secret_headers["Authorization"].expose(),
            "Bearer one"
        );
        assert_eq!(fleet.problems.len(), 1);
        let message = &fleet.problems[0].message;
        assert!(
            message.starts_with("spec.headersFrom[0]: Secret team/creds not found"),
            "{message}"
        );
        let no_key = desired_fleet(
            &[object("team", WITH_SECRET)],
            &Secrets(vec![secret("team", "creds", &[])]),
            &mut HashMap::new(),
        );
        assert!(no_key.problems[0].message.contains("has no key \"token\""));
        assert!(no_key.servers.is_empty());
    }

    #[test]
    fn malformed_objects_and_name_clashes_are_reported_on_their_own() {
        let bad: Arc<DeserializeGuard<MCPServer>> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "flotilla.dev/v1alpha1", "kind": "MCPServer",
                "metadata": {"name": "broken", "namespace": "team"},
                "spec": {"type": "carrier-pigeon"}
            }))
            .unwrap(),
        );
        let ok = "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata: {name: a}\nspec: {url: 'http://x/mcp'}\n";
        let fleet = desired_fleet(
            &[bad, object("team", ok), object("other", ok)],
            &Secrets(vec![]),
            &mut HashMap::new(),
        );
        assert_eq!(fleet.servers.len(), 1);
        assert_eq!(
            fleet.servers["a"].namespace, "other",
            "sorted by namespace, the first wins"
        );
        let messages: Vec<&str> = fleet.problems.iter().map(|p| p.message.as_str()).collect();
        assert!(
            messages.iter().any(|m| m.starts_with("invalid object")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("already used by MCPServer other/a")),
            "{messages:?}"
        );
    }
}

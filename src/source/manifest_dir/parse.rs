//! Parsing one manifest file: YAML documents into MCPServers, ToolPolicies
//! and Secrets, each
//! problem named by file, document and field, with the file's size, nesting
//! and node count bounded before any of it is typed.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use serde::de::DeserializeOwned;

use super::super::{DesiredPolicy, DesiredServer, ManifestProblem};
use crate::api::{MCPServer, MCPServerSet, ToolPolicy, validate, validate_policy};

const API_VERSION: &str = "flotilla.dev/v1alpha1";
/// Muster's group: accepted so its manifests load unchanged.
const MUSTER_API_VERSION: &str = "muster.giantswarm.io/v1alpha1";

/// Result of parsing one file: good servers and problems, in document order.
#[derive(Debug, Default, Clone)]
pub struct ParsedFile {
    pub servers: Vec<DesiredServer>,
    pub policies: Vec<DesiredPolicy>,
    /// MCPServerSets, expanded after every file is read.
    pub sets: Vec<ParsedSet>,
    /// Secrets declared beside the servers (for `headersFrom` and
    /// `clientCredentialsSecretRef`, as in a cluster).
    pub secrets: Vec<Arc<Secret>>,
    /// What could not be used. A problem that names no server (unreadable,
    /// too large, broken YAML) makes the file keep its last good servers.
    pub problems: Vec<ManifestProblem>,
}

/// One MCPServerSet document.
#[derive(Debug, Clone)]
pub struct ParsedSet {
    pub name: String,
    pub namespace: String,
    pub generation: Option<i64>,
    pub spec: crate::api::MCPServerSetSpec,
    /// `file#document`.
    pub origin: String,
}

/// Parses the MCPServer documents of one file. `origin` names the file in messages.
///
/// The parser streams and stops at the first limit it meets, so a hostile file
/// costs time in proportion to its size (nesting, node and alias budgets below).
pub fn parse_manifests(origin: &str, text: &str) -> ParsedFile {
    let mut out = ParsedFile::default();
    if text.len() > MAX_FILE_BYTES {
        out.problems.push(ManifestProblem {
            origin: origin.to_string(),
            server: None,
            policy: None,
            set: None,
            message: too_large(text.len()),
        });
        return out;
    }
    let mut reader = text.as_bytes();
    let documents = serde_saphyr::read_with_options::<_, serde_json::Value>(&mut reader, options());
    for (index, document) in documents.enumerate() {
        let doc_origin = format!("{origin}#{index}");
        let value = match document {
            Ok(serde_json::Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                out.problems.push(ManifestProblem {
                    origin: doc_origin,
                    server: None,
                    policy: None,
                    set: None,
                    message: format!("invalid YAML: {}", yaml_error(&e)),
                });
                // The reader ends after a syntax error or a breached limit;
                // a document it could not type (a non-string key) is skipped.
                continue;
            }
        };
        match parse_document(&doc_origin, value) {
            Ok(Some(Document::Server(server))) => out.servers.push(*server),
            Ok(Some(Document::Policy(policy))) => out.policies.push(*policy),
            Ok(Some(Document::Set(set))) => out.sets.push(*set),
            Ok(Some(Document::Secret(secret))) => out.secrets.push(Arc::new(*secret)),
            Ok(None) => {}
            Err(problem) => out.problems.push(problem),
        }
    }
    out
}

/// The largest manifest file read; MCPServer and Secret documents are a few KB.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Deepest nesting accepted (block or flow); a server's spec needs under 10.
const MAX_DEPTH: usize = 64;

pub fn too_large(bytes: usize) -> String {
    format!(
        "file is {bytes} bytes; manifest files are limited to {} KiB (split it into several files)",
        MAX_FILE_BYTES / 1024
    )
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_reader_input_bytes: Some(MAX_FILE_BYTES),
            max_nodes: 100_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
        },
        // YAML 1.2 booleans only (`true`/`false`), as the CRD schema expects.
        strict_booleans: true,
        // A snippet would quote the file's text, Secret values included.
        with_snippet: false,
    }
}

/// The parser's message, in words: a breached limit says which and what to do.
fn yaml_error(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::budget::BudgetBreach;
    match e {
        serde_saphyr::Error::Budget { breach, .. } => {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            match breach {
                BudgetBreach::Depth { .. } => {
                    format!("nested deeper than {MAX_DEPTH} levels{at}")
                }
                _ => format!("too many nodes, anchors or aliases for a manifest{at}"),
            }
        }
        // The scanner's own limit on flow nesting (`[[[...`).
        other => other.to_string().replace(
            "recursion limit exceeded",
            &format!("nested deeper than {MAX_DEPTH} levels"),
        ),
    }
}

/// A document the gateway uses.
enum Document {
    Server(Box<DesiredServer>),
    Policy(Box<DesiredPolicy>),
    Set(Box<ParsedSet>),
    Secret(Box<Secret>),
}

/// Parses one document; `Ok(None)` for documents of other kinds, which are skipped.
fn parse_document(
    origin: &str,
    value: serde_json::Value,
) -> Result<Option<Document>, ManifestProblem> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let is_policy = kind == "ToolPolicy";
    let is_set = kind == "MCPServerSet";
    let problem = |message: String| ManifestProblem {
        origin: origin.to_string(),
        server: name.clone().filter(|_| !is_policy && !is_set),
        policy: name.clone().filter(|_| is_policy),
        set: name.clone().filter(|_| is_set),
        message,
    };
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("");
    if kind == "Secret" && api_version == "v1" {
        return serde_path_to_error::deserialize::<_, Secret>(value)
            .map(|mut secret| {
                // The API server folds stringData into data; do the same.
                if let Some(strings) = secret.string_data.take() {
                    let data = secret.data.get_or_insert_with(Default::default);
                    for (key, text) in strings {
                        data.insert(key, ByteString(text.into_bytes()));
                    }
                }
                Some(Document::Secret(Box::new(secret)))
            })
            .map_err(|e| {
                // The error names the field only: serde's message never quotes values here.
                problem(format!("Secret {}: invalid", e.path()))
            });
    }
    if kind != "MCPServer" && kind != "ToolPolicy" && !is_set {
        return if kind.is_empty() {
            Err(problem(
                "kind: is required (expected MCPServer, MCPServerSet or ToolPolicy)".into(),
            ))
        } else {
            // Other kinds (a Secret, a Namespace) may share the file; skip them.
            Ok(None)
        };
    }
    if (is_policy || is_set) && api_version != API_VERSION {
        return Err(problem(format!(
            "apiVersion: expected {API_VERSION}, found {api_version:?}"
        )));
    }
    if api_version != API_VERSION && api_version != MUSTER_API_VERSION {
        return Err(problem(format!(
            "apiVersion: expected {API_VERSION}, found {api_version:?}"
        )));
    }
    if is_policy {
        let policy: ToolPolicy = strictly(value, &problem)?;
        let name = policy.metadata.name.clone().unwrap_or_default();
        if let Some(first) = validate_policy(&name, &policy.spec).into_iter().next() {
            return Err(problem(first.to_string()));
        }
        return Ok(Some(Document::Policy(Box::new(DesiredPolicy {
            namespace: policy
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            generation: policy.metadata.generation,
            name,
            spec: policy.spec,
            origin: origin.to_string(),
        }))));
    }
    if is_set {
        let set: MCPServerSet = strictly(value, &problem)?;
        if set.metadata.name.as_deref().unwrap_or("").is_empty() {
            return Err(problem("metadata.name: is required".into()));
        }
        return Ok(Some(Document::Set(Box::new(ParsedSet {
            namespace: set
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            generation: set.metadata.generation,
            name: set.metadata.name.clone().unwrap_or_default(),
            spec: set.spec,
            origin: origin.to_string(),
        }))));
    }
    let server: MCPServer = strictly(value, &problem)?;
    let name = server.metadata.name.clone().unwrap_or_default();
    if let Some(first) = validate(&name, &server.spec).into_iter().next() {
        return Err(problem(first.to_string()));
    }
    Ok(Some(Document::Server(Box::new(DesiredServer {
        namespace: server
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        labels: server.metadata.labels.clone().unwrap_or_default(),
        generation: server.metadata.generation,
        name,
        spec: server.spec,
        secret_headers: Default::default(),
        client_credentials: None,
        agent_credential: None,
        origin: origin.to_string(),
    }))))
}

/// Types a document, refusing fields the type does not know (each named by
/// its path); status, metadata, apiVersion and kind are not the spec's.
fn strictly<T: DeserializeOwned>(
    value: serde_json::Value,
    problem: &dyn Fn(String) -> ManifestProblem,
) -> Result<T, ManifestProblem> {
    let mut unknown = Vec::new();
    let typed: T = {
        let mut on_unknown = |path: serde_ignored::Path| unknown.push(path.to_string());
        let tracked = serde_ignored::Deserializer::new(value, &mut on_unknown);
        serde_path_to_error::deserialize(tracked).map_err(|e| {
            let path = e.path().to_string();
            problem(format!("{path}: {}", e.into_inner()))
        })?
    };
    // Status is written by the gateway, never read from manifests.
    // apiVersion and kind were checked by the caller.
    unknown.retain(|p| {
        !(p.starts_with("status") || p.starts_with("metadata") || p == "apiVersion" || p == "kind")
    });
    if let Some(field) = unknown.first() {
        return Err(problem(format!(
            "{field}: unknown field (check spelling against `flotilla crd`)"
        )));
    }
    Ok(typed)
}

//! The manifest-directory source: every `*.yaml`/`*.yml` file in a directory,
//! each holding one or more MCPServer documents (the YAML a user would
//! `kubectl apply`). The directory is watched; every change re-reads it and
//! publishes a new [`DesiredFleet`].
//!
//! Bad input loses nothing: a file that stops parsing keeps its last good
//! servers, and a broken document keeps the last good version of its server,
//! while the problem (file, document index, field) is reported.
//!
//! Secrets (`kind: Secret`, `apiVersion: v1`) in the directory are read too,
//! so `headersFrom` and `clientCredentialsSecretRef` work as in a cluster.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::kubernetes::{SecretLookup, resolve_secret_refs};
use super::{DesiredFleet, DesiredServer, ManifestProblem};
use crate::api::{MCPServer, validate};

const API_VERSION: &str = "flotilla.dev/v1alpha1";
/// Muster's group: accepted so its manifests load unchanged.
const MUSTER_API_VERSION: &str = "muster.giantswarm.io/v1alpha1";
/// Editors write files in several steps; wait for quiet before re-reading.
const SETTLE: Duration = Duration::from_millis(150);

/// Result of parsing one file: good servers and problems, in document order.
#[derive(Debug, Default, Clone)]
pub struct ParsedFile {
    pub servers: Vec<DesiredServer>,
    /// Secrets declared beside the servers (for `headersFrom` and
    /// `clientCredentialsSecretRef`, as in a cluster).
    pub secrets: Vec<Arc<Secret>>,
    pub problems: Vec<ManifestProblem>,
    /// The file as a whole could not be read or split into documents.
    pub unreadable: bool,
}

/// Parses the MCPServer documents of one file. `origin` names the file in messages.
pub fn parse_manifests(origin: &str, text: &str) -> ParsedFile {
    let mut out = ParsedFile::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_origin = format!("{origin}#{index}");
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                out.problems.push(ManifestProblem {
                    origin: doc_origin,
                    server: None,
                    message: format!("invalid YAML: {e}"),
                });
                // The YAML stream cannot be resynchronised after a syntax error.
                out.unreadable = true;
                break;
            }
        };
        match parse_document(&doc_origin, value) {
            Ok(Some(Document::Server(server))) => out.servers.push(*server),
            Ok(Some(Document::Secret(secret))) => out.secrets.push(Arc::new(*secret)),
            Ok(None) => {}
            Err(problem) => out.problems.push(problem),
        }
    }
    out
}

/// A document the gateway uses.
enum Document {
    Server(Box<DesiredServer>),
    Secret(Box<Secret>),
}

/// Parses one document; `Ok(None)` for documents of other kinds, which are skipped.
fn parse_document(
    origin: &str,
    value: serde_yaml::Value,
) -> Result<Option<Document>, ManifestProblem> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let problem = |message: String| ManifestProblem {
        origin: origin.to_string(),
        server: name.clone(),
        message,
    };
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
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
    if kind != "MCPServer" {
        return if kind.is_empty() {
            Err(problem("kind: is required (expected MCPServer)".into()))
        } else {
            // Other kinds (a Secret, a Namespace) may share the file; skip them.
            Ok(None)
        };
    }
    if api_version != API_VERSION && api_version != MUSTER_API_VERSION {
        return Err(problem(format!(
            "apiVersion: expected {API_VERSION}, found {api_version:?}"
        )));
    }
    let mut unknown = Vec::new();
    let server: MCPServer = {
        let mut on_unknown = |path: serde_ignored::Path| unknown.push(path.to_string());
        let tracked = serde_ignored::Deserializer::new(value, &mut on_unknown);
        serde_path_to_error::deserialize(tracked).map_err(|e| {
            let path = e.path().to_string();
            problem(format!("{path}: {}", e.into_inner()))
        })?
    };
    // Status is written by the gateway, never read from manifests.
    // apiVersion and kind were checked above.
    unknown.retain(|p| {
        !(p.starts_with("status") || p.starts_with("metadata") || p == "apiVersion" || p == "kind")
    });
    if let Some(field) = unknown.first() {
        return Err(problem(format!(
            "{field}: unknown field (check spelling against `flotilla crd`)"
        )));
    }
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
        origin: origin.to_string(),
    }))))
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    ) && !path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Reads a directory once. `previous` holds the last good parse of each file,
/// used to keep servers whose file or document broke.
pub fn load_dir(dir: &Path, previous: &mut HashMap<PathBuf, ParsedFile>) -> DesiredFleet {
    let mut fleet = DesiredFleet::default();
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_manifest(p))
            .collect(),
        Err(e) => {
            fleet.problems.push(ManifestProblem {
                origin: dir.display().to_string(),
                server: None,
                message: format!("cannot read manifest directory: {e}"),
            });
            return fleet;
        }
    };
    paths.sort();
    let mut current = HashMap::new();
    for path in paths {
        let origin = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut parsed = match std::fs::read_to_string(&path) {
            Ok(text) => parse_manifests(&origin, &text),
            Err(e) => ParsedFile {
                problems: vec![ManifestProblem {
                    origin: origin.clone(),
                    server: None,
                    message: format!("cannot read file: {e}"),
                }],
                unreadable: true,
                ..Default::default()
            },
        };
        let last_good = previous.get(&path);
        if parsed.unreadable
            && let Some(last_good) = last_good
        {
            // Keep serving what the file declared before it broke.
            let kept: Vec<_> = last_good
                .servers
                .iter()
                .filter(|s| !parsed.servers.iter().any(|p| p.name == s.name))
                .cloned()
                .collect();
            parsed.servers.extend(kept);
        }
        if let Some(last_good) = last_good {
            for problem in &parsed.problems {
                let Some(name) = &problem.server else {
                    continue;
                };
                if parsed.servers.iter().any(|s| &s.name == name) {
                    continue;
                }
                if let Some(old) = last_good.servers.iter().find(|s| &s.name == name) {
                    parsed.servers.push(old.clone());
                }
            }
        }
        for server in &parsed.servers {
            if let Some(existing) = fleet.servers.get(&server.name) {
                fleet.problems.push(ManifestProblem {
                    origin: server.origin.clone(),
                    server: Some(server.name.clone()),
                    message: format!(
                        "metadata.name: {:?} is already declared in {}; this copy is ignored",
                        server.name, existing.origin
                    ),
                });
            } else {
                fleet.servers.insert(server.name.clone(), server.clone());
            }
        }
        fleet.problems.extend(parsed.problems.iter().cloned());
        current.insert(path, parsed);
    }
    resolve_secrets(&mut fleet, &current);
    *previous = current;
    fleet
}

/// Secrets declared in the directory, by (namespace, name).
struct DirSecrets(HashMap<(String, String), Arc<Secret>>);

impl SecretLookup for DirSecrets {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.0
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// Fills in Secret references; a server whose Secret is missing is dropped
/// and reported, and the others are unaffected.
fn resolve_secrets(fleet: &mut DesiredFleet, files: &HashMap<PathBuf, ParsedFile>) {
    let secrets = DirSecrets(
        files
            .values()
            .flat_map(|f| f.secrets.iter())
            .map(|s| {
                let namespace = s
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let name = s.metadata.name.clone().unwrap_or_default();
                ((namespace, name), s.clone())
            })
            .collect(),
    );
    let mut broken = Vec::new();
    for server in fleet.servers.values_mut() {
        match resolve_secret_refs(&server.spec, &server.namespace, &secrets) {
            Ok((headers, credentials)) => {
                server.secret_headers = headers;
                server.client_credentials = credentials;
            }
            Err(message) => broken.push(ManifestProblem {
                origin: server.origin.clone(),
                server: Some(server.name.clone()),
                message,
            }),
        }
    }
    for problem in broken {
        if let Some(name) = &problem.server {
            fleet.servers.remove(name);
        }
        fleet.problems.push(problem);
    }
}

/// A watched manifest directory publishing [`DesiredFleet`] snapshots.
pub struct ManifestDir {
    rx: watch::Receiver<Arc<DesiredFleet>>,
    // Dropping the watcher stops the notifications.
    _watcher: notify::RecommendedWatcher,
}

impl ManifestDir {
    /// Loads `dir` now and keeps re-loading it on change until `cancel`.
    pub fn watch(dir: PathBuf, cancel: CancellationToken) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut files = HashMap::new();
        let initial = load_dir(&dir, &mut files);
        report(&initial, None);
        let (tx, rx) = watch::channel(Arc::new(initial));
        let (event_tx, mut event_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = event_tx.send(());
                }
            })
            .context("creating file watcher")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching manifest directory {}", dir.display()))?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    got = event_rx.recv() => if got.is_none() { return },
                }
                // Coalesce the burst of events one save produces.
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(SETTLE) => break,
                        got = event_rx.recv() => if got.is_none() { return },
                    }
                }
                let next = load_dir(&dir, &mut files);
                let prev = tx.borrow().clone();
                if *prev != next {
                    report(&next, Some(&prev));
                    tx.send_replace(Arc::new(next));
                }
            }
        });
        Ok(Self {
            rx,
            _watcher: watcher,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<DesiredFleet>> {
        self.rx.clone()
    }
}

/// Logs problems that are new since `prev`.
fn report(fleet: &DesiredFleet, prev: Option<&DesiredFleet>) {
    for problem in &fleet.problems {
        if prev.is_some_and(|p| p.problems.contains(problem)) {
            continue;
        }
        tracing::warn!(
            manifest = %problem.origin,
            server = problem.server.as_deref().unwrap_or(""),
            "invalid manifest: {}",
            problem.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: flotilla.dev/v1alpha1
kind: MCPServer
metadata: {name: a}
spec: {type: stdio, command: /bin/true}
---
apiVersion: flotilla.dev/v1alpha1
kind: MCPServer
metadata: {name: b}
spec: {url: "http://127.0.0.1:9/mcp", toolPrefix: bee}
"#;

    #[test]
    fn multi_document_files_yield_every_server() {
        let parsed = parse_manifests("f.yaml", GOOD);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let names: Vec<_> = parsed.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(parsed.servers[1].spec.tool_prefix.as_deref(), Some("bee"));
    }

    #[test]
    fn secrets_in_the_directory_resolve_references_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sso/fleet");
        for file in ["cluster-a.yaml", "cluster-b.yaml"] {
            std::fs::copy(example.join(file), dir.path().join(file)).unwrap();
        }
        let fleet = load_dir(dir.path(), &mut HashMap::new());
        assert!(fleet.problems.is_empty(), "{:?}", fleet.problems);
        let exchanging = &fleet.servers["cluster-b-echo"];
        let credentials = exchanging.client_credentials.as_ref().expect("resolved");
        assert_eq!(credentials.client_id, "flotilla-gateway");
        assert_eq!(
            credentials.client_secret.expose(),
            "example-only-cluster-b-secret"
        );
        assert!(!format!("{exchanging:?}").contains("example-only-cluster-b-secret"));
        // Without the Secret, only that server is reported (by field and Secret).
        let text = std::fs::read_to_string(dir.path().join("cluster-b.yaml")).unwrap();
        let without = text.split("---").nth(1).unwrap().to_string();
        std::fs::write(dir.path().join("cluster-b.yaml"), without).unwrap();
        let fleet = load_dir(dir.path(), &mut HashMap::new());
        assert!(fleet.servers.contains_key("cluster-a-echo"));
        assert!(!fleet.servers.contains_key("cluster-b-echo"));
        let problem = &fleet.problems[0];
        assert!(
            problem.message.starts_with(
                "spec.auth.tokenExchange.clientCredentialsSecretRef: Secret default/cluster-b-dex-client not found"
            ),
            "{problem}"
        );
    }

    #[test]
    fn a_bad_document_names_file_index_and_field_and_spares_the_others() {
        let text = format!(
            "{GOOD}---\napiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata: {{name: c}}\nspec: {{type: stdio, comand: x}}\n---\napiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata: {{name: d}}\nspec: {{timeout: soon, url: 'http://x'}}\n"
        );
        let parsed = parse_manifests("f.yaml", &text);
        assert_eq!(parsed.servers.len(), 2);
        assert_eq!(parsed.problems.len(), 2);
        assert_eq!(parsed.problems[0].origin, "f.yaml#2");
        assert!(
            parsed.problems[0].message.contains("spec.comand"),
            "{}",
            parsed.problems[0]
        );
        assert_eq!(parsed.problems[1].origin, "f.yaml#3");
        assert!(
            parsed.problems[1].message.starts_with("spec.timeout"),
            "{}",
            parsed.problems[1]
        );
        assert_eq!(parsed.problems[1].server.as_deref(), Some("d"));
    }

    #[test]
    fn a_file_that_breaks_keeps_its_last_good_servers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fleet.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let mut files = HashMap::new();
        assert_eq!(load_dir(dir.path(), &mut files).servers.len(), 2);
        std::fs::write(&file, "apiVersion: [unclosed\n").unwrap();
        let fleet = load_dir(dir.path(), &mut files);
        assert_eq!(
            fleet.servers.len(),
            2,
            "servers kept while the file is broken"
        );
        assert_eq!(fleet.problems.len(), 1);
        assert!(fleet.problems[0].message.contains("invalid YAML"));
    }

    #[test]
    fn duplicate_names_across_files_keep_the_first_and_report_the_second() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("2.yml"), GOOD).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let fleet = load_dir(dir.path(), &mut HashMap::new());
        assert_eq!(fleet.servers["a"].origin, "1.yaml#0");
        assert_eq!(fleet.problems.len(), 2);
        assert!(
            fleet.problems[0]
                .message
                .contains("already declared in 1.yaml#0")
        );
    }
}

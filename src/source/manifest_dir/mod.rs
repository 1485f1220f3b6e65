//! The manifest-directory source: every `*.yaml`/`*.yml` file in a directory,
//! each holding one or more MCPServer and ToolPolicy documents (the YAML a
//! user would `kubectl apply`). The directory is watched; every change re-reads it and
//! publishes a new [`DesiredFleet`].
//!
//! Bad input loses nothing: a file that stops parsing keeps its last good
//! servers and policies, and a broken document keeps the last good version
//! of its server or policy, while the problem (file, document index, field)
//! is reported.
//!
//! Secrets (`kind: Secret`, `apiVersion: v1`) in the directory are read too,
//! so `headersFrom` and `clientCredentialsSecretRef` work as in a cluster.
//! MCPServerSets are expanded after every file is read (`super::discovery`),
//! so a generated member never takes a hand-written server's name.

mod parse;
mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;

use super::discovery::{Discovery, Inventories, SetInput};
use super::kubernetes::{SecretLookup, resolve_secret_refs};
use super::{DesiredFleet, ManifestProblem};
pub use parse::{ParsedFile, parse_manifests};
pub use watch::ManifestDir;

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    ) && !path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// What the last load of a directory knew about each file, so the next load
/// re-reads only files that changed and keeps the last good servers of a file
/// that broke.
#[derive(Debug, Default)]
pub struct LastLoad(HashMap<PathBuf, KnownFile>);

#[derive(Debug, Clone)]
struct KnownFile {
    /// Size and modification time when it was read; `None` when unknown.
    stamp: Option<Stamp>,
    /// What it declared, with the last good servers and Secrets it kept.
    parsed: ParsedFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: SystemTime,
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            len: meta.len(),
            modified: meta.modified().ok()?,
        })
    }
}

/// Reads a directory once: files unchanged since `last` are not read again.
/// Sets are expanded without watching or polling (see [`load_dir_with`]).
pub fn load_dir(dir: &Path, last: &mut LastLoad) -> DesiredFleet {
    load_dir_with(dir, last, &Discovery::inert())
}

/// [`load_dir`], expanding MCPServerSets with `discovery`.
pub fn load_dir_with(dir: &Path, last: &mut LastLoad, discovery: &Discovery) -> DesiredFleet {
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
                policy: None,
                set: None,
                message: format!("cannot read manifest directory: {e}"),
            });
            return fleet;
        }
    };
    paths.sort();
    load_files(dir, paths, last, discovery)
}

/// Reads one manifest file (`flotilla validate FILE`); its Secret references
/// resolve against the Secrets in the same file.
pub fn load_file(path: &Path) -> DesiredFleet {
    let dir = path.parent().unwrap_or(Path::new("."));
    load_files(
        dir,
        vec![path.to_path_buf()],
        &mut LastLoad::default(),
        &Discovery::inert(),
    )
}

fn load_files(
    dir: &Path,
    paths: Vec<PathBuf>,
    last: &mut LastLoad,
    discovery: &Discovery,
) -> DesiredFleet {
    let mut fleet = DesiredFleet::default();
    let mut sets: Vec<SetInput> = Vec::new();
    let mut current = HashMap::new();
    for path in paths {
        let stamp = Stamp::of(&path);
        let known = last.0.remove(&path);
        let parsed = match known {
            Some(known) if stamp.is_some() && known.stamp == stamp => known.parsed,
            known => keep_last_good(read_file(&path, stamp), known.map(|k| k.parsed)),
        };
        for server in &parsed.servers {
            if let Some(existing) = fleet.servers.get(&server.name) {
                fleet.problems.push(ManifestProblem {
                    origin: server.origin.clone(),
                    server: Some(server.name.clone()),
                    policy: None,
                    set: None,
                    message: format!(
                        "metadata.name: {:?} is already declared in {}; this copy is ignored",
                        server.name, existing.origin
                    ),
                });
            } else {
                fleet.servers.insert(server.name.clone(), server.clone());
            }
        }
        for policy in &parsed.policies {
            let key = format!("{}/{}", policy.namespace, policy.name);
            if let Some(existing) = fleet.policies.get(&key) {
                fleet.problems.push(ManifestProblem {
                    origin: policy.origin.clone(),
                    server: None,
                    policy: Some(policy.name.clone()),
                    set: None,
                    message: format!(
                        "metadata.name: ToolPolicy {:?} is already declared in {}; this copy is ignored",
                        policy.name, existing.origin
                    ),
                });
            } else {
                fleet.policies.insert(key, policy.clone());
            }
        }
        for set in &parsed.sets {
            if let Some(existing) = sets
                .iter()
                .find(|s| s.name == set.name && s.namespace == set.namespace)
            {
                fleet.problems.push(ManifestProblem {
                    origin: set.origin.clone(),
                    server: None,
                    policy: None,
                    set: Some(set.name.clone()),
                    message: format!(
                        "metadata.name: MCPServerSet {:?} is already declared in {}; this copy is ignored",
                        set.name, existing.origin
                    ),
                });
            } else {
                sets.push(SetInput {
                    name: set.name.clone(),
                    namespace: set.namespace.clone(),
                    generation: set.generation,
                    spec: set.spec.clone(),
                    origin: set.origin.clone(),
                    base_dir: Some(dir.to_path_buf()),
                });
            }
        }
        fleet.problems.extend(parsed.problems.iter().cloned());
        current.insert(path, KnownFile { stamp, parsed });
    }
    let secrets = dir_secrets(&current);
    discovery.expand_sets(
        &sets,
        &Inventories {
            secrets: &secrets,
            managed_clusters: None,
        },
        &mut fleet,
    );
    resolve_secrets(&mut fleet, &secrets);
    last.0 = current;
    fleet
}

/// Reads and parses one file; `stamp` is its size as just seen (if known).
fn read_file(path: &Path, stamp: Option<Stamp>) -> ParsedFile {
    let origin = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unreadable = |message: String| ParsedFile {
        problems: vec![ManifestProblem {
            origin: origin.clone(),
            server: None,
            policy: None,
            set: None,
            message,
        }],
        ..Default::default()
    };
    // Checked before reading, so a huge file is never loaded into memory
    // (parse_manifests checks the text again, for a file that grew since).
    if let Some(stamp) = stamp
        && stamp.len > parse::MAX_FILE_BYTES as u64
    {
        return unreadable(parse::too_large(stamp.len as usize));
    }
    match std::fs::read_to_string(path) {
        Ok(text) => parse_manifests(&origin, &text),
        Err(e) => unreadable(format!("cannot read file: {e}")),
    }
}

/// Bad input loses nothing. A server leaves only when its file is deleted or
/// the file, read whole, no longer declares it. While a file is broken,
/// half-written or empty, the servers and Secrets it declared before stay, each
/// server marked with the problem (shown as InvalidSpec); a document that
/// names its server keeps that server's last good version.
fn keep_last_good(mut parsed: ParsedFile, last_good: Option<ParsedFile>) -> ParsedFile {
    let Some(last_good) = last_good else {
        return parsed;
    };
    let declares_nothing = parsed.servers.is_empty()
        && parsed.policies.is_empty()
        && parsed.sets.is_empty()
        && parsed.secrets.is_empty()
        && parsed.problems.is_empty()
        && !(last_good.servers.is_empty()
            && last_good.policies.is_empty()
            && last_good.sets.is_empty());
    if declares_nothing {
        let first = last_good
            .servers
            .first()
            .map(|s| &s.origin)
            .or(last_good.policies.first().map(|p| &p.origin))
            .or(last_good.sets.first().map(|s| &s.origin));
        let origin = first.map_or("", |o| o.split('#').next().unwrap_or(""));
        parsed.problems.push(ManifestProblem {
            origin: origin.to_string(),
            server: None,
            policy: None,
            set: None,
            message: "the file declares nothing now (half-written?); its servers and policies \
                      stay until the file is deleted or declares others"
                .into(),
        });
    }
    // A file with a problem may be half-written: a server it no longer
    // declares may be one its writer has not reached yet, so it stays. (A
    // problem that names no server may hide any of them; one that names a
    // server hides that one, and says nothing of the file's end.)
    let unnamed = parsed
        .problems
        .iter()
        .find(|p| p.server.is_none() && p.policy.is_none() && p.set.is_none())
        .or(parsed.problems.first())
        .map(|p| p.to_string());
    let unnamed = unnamed.as_deref();
    keep_each(
        &mut parsed.servers,
        last_good.servers,
        &mut parsed.problems,
        unnamed,
        |s| &s.name,
        |p| p.server.as_deref(),
        |old, problem| ManifestProblem {
            origin: old.origin.clone(),
            server: Some(old.name.clone()),
            policy: None,
            set: None,
            message: format!("its file is not valid now ({problem})"),
        },
    );
    // A policy keeps its last good rules the same way: an edit that breaks
    // a deny must not lift it.
    keep_each(
        &mut parsed.policies,
        last_good.policies,
        &mut parsed.problems,
        unnamed,
        |p| &p.name,
        |p| p.policy.as_deref(),
        |old, problem| ManifestProblem {
            origin: old.origin.clone(),
            server: None,
            policy: Some(old.name.clone()),
            set: None,
            message: format!("its file is not valid now ({problem}); its last good rules apply"),
        },
    );
    // A set keeps its last good spec too: a broken edit must not drop its members.
    keep_each(
        &mut parsed.sets,
        last_good.sets,
        &mut parsed.problems,
        unnamed,
        |s| &s.name,
        |p| p.set.as_deref(),
        |old, problem| ManifestProblem {
            origin: old.origin.clone(),
            server: None,
            policy: None,
            set: Some(old.name.clone()),
            message: format!("its file is not valid now ({problem}); its last good spec applies"),
        },
    );
    if unnamed.is_some() {
        for old in last_good.secrets {
            if !parsed.secrets.iter().any(|s| {
                s.metadata.name == old.metadata.name
                    && s.metadata.namespace == old.metadata.namespace
            }) {
                parsed.secrets.push(old);
            }
        }
    }
    parsed
}

/// Keeps each of `old` (a file's last good servers, policies or sets) that
/// the file no longer yields in `kept`, when a problem names it, or when the
/// file has a problem that names nothing (`unnamed`: then reported with
/// `report`, since the file may be half-written). One a whole good file no
/// longer declares is gone.
fn keep_each<T>(
    kept: &mut Vec<T>,
    old: Vec<T>,
    problems: &mut Vec<ManifestProblem>,
    unnamed: Option<&str>,
    name: impl Fn(&T) -> &String,
    names: impl Fn(&ManifestProblem) -> Option<&str>,
    report: impl Fn(&T, &str) -> ManifestProblem,
) {
    for old in old {
        if kept.iter().any(|k| name(k) == name(&old)) {
            continue;
        }
        let named = problems
            .iter()
            .any(|p| names(p) == Some(name(&old).as_str()));
        match unnamed {
            Some(problem) if !named => problems.push(report(&old, problem)),
            None if !named => continue,
            _ => {}
        }
        kept.push(old);
    }
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

/// The Secrets every file declares.
fn dir_secrets(files: &HashMap<PathBuf, KnownFile>) -> DirSecrets {
    DirSecrets(
        files
            .values()
            .flat_map(|f| f.parsed.secrets.iter())
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
    )
}

/// Fills in Secret references; a server whose Secret is missing is dropped
/// and reported, and the others are unaffected.
fn resolve_secrets(fleet: &mut DesiredFleet, secrets: &DirSecrets) {
    let mut broken = Vec::new();
    for server in fleet.servers.values_mut() {
        match resolve_secret_refs(&server.spec, &server.namespace, secrets) {
            Ok(refs) => refs.apply_to(server),
            Err(message) => broken.push(ManifestProblem {
                origin: server.origin.clone(),
                server: Some(server.name.clone()),
                policy: None,
                set: None,
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
        let fleet = load_dir(dir.path(), &mut LastLoad::default());
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
        let fleet = load_dir(dir.path(), &mut LastLoad::default());
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
        let mut files = LastLoad::default();
        assert_eq!(load_dir(dir.path(), &mut files).servers.len(), 2);
        std::fs::write(&file, "apiVersion: [unclosed\n").unwrap();
        let fleet = load_dir(dir.path(), &mut files);
        assert_eq!(
            fleet.servers.len(),
            2,
            "servers kept while the file is broken"
        );
        // The file's problem, and each kept server marked with it.
        assert_eq!(fleet.problems.len(), 3, "{:?}", fleet.problems);
        assert!(fleet.problems[0].message.contains("invalid YAML"));
        assert_eq!(fleet.problems[1].server.as_deref(), Some("a"));
        assert_eq!(fleet.problems[2].server.as_deref(), Some("b"));
    }

    #[test]
    fn duplicate_names_across_files_keep_the_first_and_report_the_second() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("2.yml"), GOOD).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let fleet = load_dir(dir.path(), &mut LastLoad::default());
        assert_eq!(fleet.servers["a"].origin, "1.yaml#0");
        assert_eq!(fleet.problems.len(), 2);
        assert!(
            fleet.problems[0]
                .message
                .contains("already declared in 1.yaml#0")
        );
    }

    /// Two servers from GOOD in `fleet.yaml`, loaded once.
    fn loaded_good() -> (tempfile::TempDir, PathBuf, LastLoad) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fleet.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let mut last = LastLoad::default();
        assert_eq!(load_dir(dir.path(), &mut last).servers.len(), 2);
        (dir, file, last)
    }

    #[test]
    fn a_half_written_file_keeps_its_servers_and_marks_them_invalid() {
        let (dir, file, mut last) = loaded_good();
        // A writer that has written only the first line so far.
        std::fs::write(&file, "apiVersion: flotilla.dev/v1alpha1\n").unwrap();
        let fleet = load_dir(dir.path(), &mut last);
        assert_eq!(fleet.servers.keys().collect::<Vec<_>>(), ["a", "b"]);
        for name in ["a", "b"] {
            let marked = fleet
                .problems
                .iter()
                .find(|p| p.server.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("{name} is marked: {:?}", fleet.problems));
            assert!(marked.message.contains("kind: is required"), "{marked}");
        }
        // Truncated to nothing: still kept, and said so.
        std::fs::write(&file, "").unwrap();
        let fleet = load_dir(dir.path(), &mut last);
        assert_eq!(fleet.servers.len(), 2);
        assert!(
            fleet
                .problems
                .iter()
                .any(|p| p.message.contains("declares nothing")),
            "{:?}",
            fleet.problems
        );
        // Written out in full again: clean.
        std::fs::write(&file, GOOD).unwrap();
        let fleet = load_dir(dir.path(), &mut last);
        assert_eq!(fleet.servers.len(), 2);
        assert!(fleet.problems.is_empty(), "{:?}", fleet.problems);
    }

    #[test]
    fn a_server_leaves_when_its_file_is_deleted_or_no_longer_declares_it() {
        let (dir, file, mut last) = loaded_good();
        let only_b = GOOD.split("---").nth(1).unwrap();
        std::fs::write(&file, only_b).unwrap();
        let fleet = load_dir(dir.path(), &mut last);
        assert_eq!(fleet.servers.keys().collect::<Vec<_>>(), ["b"]);
        assert!(fleet.problems.is_empty(), "{:?}", fleet.problems);
        std::fs::remove_file(&file).unwrap();
        assert!(load_dir(dir.path(), &mut last).servers.is_empty());
    }

    #[test]
    fn a_broken_file_keeps_the_secrets_its_servers_use() {
        let dir = tempfile::tempdir().unwrap();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sso/fleet");
        let file = dir.path().join("cluster-b.yaml");
        std::fs::copy(example.join("cluster-b.yaml"), &file).unwrap();
        let mut last = LastLoad::default();
        let fleet = load_dir(dir.path(), &mut last);
        assert!(fleet.servers["cluster-b-echo"].client_credentials.is_some());
        std::fs::write(&file, "kind: [unclosed\n").unwrap();
        let fleet = load_dir(dir.path(), &mut last);
        let kept = &fleet.servers["cluster-b-echo"];
        assert!(kept.client_credentials.is_some(), "{:?}", fleet.problems);
    }

    #[test]
    fn an_unchanged_file_is_not_read_again() {
        let (dir, file, mut last) = loaded_good();
        let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
        // Same length and modification time, different content: proof that
        // the second load reused the first parse instead of reading.
        let renamed = GOOD.replace("name: a}", "name: z}");
        assert_eq!(renamed.len(), GOOD.len());
        std::fs::write(&file, &renamed).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert!(load_dir(dir.path(), &mut last).servers.contains_key("a"));
        // A real change (new modification time) is read.
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(modified + std::time::Duration::from_secs(1))
            .unwrap();
        assert!(load_dir(dir.path(), &mut last).servers.contains_key("z"));
    }

    #[test]
    fn deep_nesting_and_huge_files_are_refused_early_with_the_limit_named() {
        // Unclosed flow collections: serde_yaml scanned all of them before its
        // depth limit applied, in time quadratic in their number.
        for text in [
            format!("a: {}\n", "[".repeat(100_000)),
            format!("a: {}\n", "{a: ".repeat(25_000)),
        ] {
            let parsed = parse_manifests("deep.yaml", &text);
            // Refused as a whole: no server, a problem that names none.
            assert!(parsed.servers.is_empty());
            assert_eq!(parsed.problems[0].server, None);
            let message = &parsed.problems[0].message;
            assert!(
                message.starts_with("invalid YAML: nested deeper than 64 levels"),
                "{message}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let huge = format!("{GOOD}# {}\n", "x".repeat(parse::MAX_FILE_BYTES));
        std::fs::write(dir.path().join("huge.yaml"), huge).unwrap();
        let fleet = load_dir(dir.path(), &mut LastLoad::default());
        assert!(fleet.servers.is_empty());
        assert!(
            fleet.problems[0].message.contains("limited to 1024 KiB"),
            "{}",
            fleet.problems[0]
        );
    }

    const SET: &str = r#"
apiVersion: flotilla.dev/v1alpha1
kind: MCPServerSet
metadata: {name: listed}
spec:
  generators:
  - list: {elements: [{name: one, labels: {env: prod}}, {name: two}]}
  template:
    metadata: {name: "{{name}}-sim"}
    spec: {type: stdio, command: /bin/true, family: {name: sims}}
"#;

    #[test]
    fn a_set_expands_into_servers_beside_the_hand_written_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fleet.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("set.yaml"), SET).unwrap();
        let fleet = load_dir(dir.path(), &mut LastLoad::default());
        assert!(fleet.problems.is_empty(), "{:?}", fleet.problems);
        assert_eq!(
            fleet.servers.keys().collect::<Vec<_>>(),
            ["a", "b", "one-sim", "two-sim"]
        );
        let one = &fleet.servers["one-sim"];
        assert_eq!(one.origin, "set.yaml#0 member one");
        assert_eq!(one.labels["env"], "prod");
        assert_eq!(
            one.spec.family.as_ref().unwrap().instance.as_deref(),
            Some("one")
        );
        assert_eq!(fleet.sets["default/listed"].members, ["one-sim", "two-sim"]);
    }

    #[test]
    fn a_broken_set_edit_keeps_its_members_and_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("set.yaml");
        std::fs::write(&file, SET).unwrap();
        let mut last = LastLoad::default();
        assert_eq!(load_dir(dir.path(), &mut last).servers.len(), 2);
        std::fs::write(&file, SET.replace("generators:", "generator:")).unwrap();
        let fleet = load_dir(dir.path(), &mut last);
        assert_eq!(fleet.servers.len(), 2, "{:?}", fleet.problems);
        let problem = &fleet.problems[0];
        assert_eq!(problem.set.as_deref(), Some("listed"));
        assert!(
            problem.message.starts_with("spec.generator: unknown field"),
            "{problem}"
        );
    }

    #[test]
    fn validate_reads_a_single_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("one.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let fleet = load_file(&file);
        assert_eq!(fleet.servers.len(), 2);
        assert_eq!(fleet.servers["a"].origin, "one.yaml#0");
    }

    mod fuzz {
        //! Bounded fuzzing: YAML-shaped noise never panics, is parsed the same
        //! way twice, and never costs a server that was declared before.

        use proptest::prelude::*;

        use super::*;

        const FRAGMENTS: &[&str] = &[
            "apiVersion: flotilla.dev/v1alpha1\n",
            "kind: MCPServer\n",
            "kind: Secret\n",
            "apiVersion: v1\n",
            "metadata:\n",
            "  name: a\n",
            "  name: b\n",
            "spec:\n",
            "  type: stdio\n",
            "  command: /bin/true\n",
            "  url: 'http://x/mcp'\n",
            "  headersFrom: [{secretRef: {name: s}}]\n",
            "stringData: {k: v}\n",
            "---\n",
            "[",
            "]",
            "{",
            "}",
            ": ",
            ", ",
            "- ",
            "? ",
            "\n",
            "  ",
            "\t",
            "\"",
            "'",
            "#",
            "&x ",
            "*x ",
            "!!str ",
            "!!binary ",
            "<<: *x\n",
            "|\n",
            ">-\n",
            "~",
            "null",
            "0x1F",
            "1e400",
            "-.inf",
            "\u{202e}",
            "\u{feff}",
            "\\",
            "%YAML 1.2\n",
            "...\n",
        ];

        fn yamlish() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                4 => prop::sample::select(FRAGMENTS).prop_map(str::to_string),
                1 => any::<char>().prop_map(String::from),
            ];
            prop::collection::vec(piece, 0..80).prop_map(|pieces| pieces.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

            #[test]
            fn noise_is_reported_never_panics_and_parses_the_same_twice(text in yamlish()) {
                let first = parse_manifests("f.yaml", &text);
                let second = parse_manifests("f.yaml", &text);
                prop_assert_eq!(&first.servers, &second.servers);
                prop_assert_eq!(&first.problems, &second.problems);
                for problem in &first.problems {
                    prop_assert!(problem.origin.starts_with("f.yaml"), "{}", problem);
                    prop_assert!(!problem.message.contains("serde"), "{}", problem);
                }
            }

            #[test]
            fn a_broken_edit_never_costs_a_declared_server(text in yamlish()) {
                let dir = tempfile::tempdir().unwrap();
                let file = dir.path().join("fleet.yaml");
                std::fs::write(&file, GOOD).unwrap();
                let mut last = LastLoad::default();
                load_dir(dir.path(), &mut last);
                std::fs::write(&file, &text).unwrap();
                let parsed = parse_manifests("fleet.yaml", &text);
                let fleet = load_dir(dir.path(), &mut last);
                // Broken, half-written or emptied: everything stays.
                let declares_nothing = parsed.servers.is_empty() && parsed.secrets.is_empty();
                if !parsed.problems.is_empty() || declares_nothing {
                    prop_assert!(fleet.servers.contains_key("a"), "{:?}", fleet.problems);
                    prop_assert!(fleet.servers.contains_key("b"), "{:?}", fleet.problems);
                }
            }
        }
    }
}

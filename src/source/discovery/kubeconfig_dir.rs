//! The `kubeconfigDir` generator: one member per kubeconfig file in a
//! directory (named by the file, using its current context) or one per
//! context. Only names, server URLs and the `flotilla.dev/member` context
//! extension (the member's `labels` and `aliases`) are read: credentials in
//! the files are never deserialized, logged or put in messages.

use std::path::Path;

use serde::Deserialize;

use super::{Inventory, Member};
use crate::api::KubeconfigDirGenerator;

/// Largest kubeconfig read; real ones are a few KB (certificates included).
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Files looked at in one directory; members are capped later by the set.
const MAX_FILES: usize = 2000;

#[derive(Deserialize)]
struct Kubeconfig {
    /// `Config` in a kubeconfig; a file of another kind is not one and is skipped.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    #[serde(default)]
    cluster: Option<ClusterInfo>,
}

#[derive(Deserialize)]
struct ClusterInfo {
    #[serde(default)]
    server: Option<String>,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    #[serde(default)]
    context: Option<ContextInfo>,
}

#[derive(Deserialize)]
struct ContextInfo {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    extensions: Vec<NamedExtension>,
}

/// A kubeconfig extension (`{name, extension}`); only ours is read.
#[derive(Deserialize)]
struct NamedExtension {
    name: String,
    #[serde(default)]
    extension: Option<MemberExtension>,
}

/// The `flotilla.dev/member` extension: what the inventory says of a member.
#[derive(Deserialize, Default, Clone)]
struct MemberExtension {
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    aliases: Vec<String>,
}

/// Name of the context extension carrying a member's labels and aliases.
pub const MEMBER_EXTENSION: &str = "flotilla.dev/member";

/// Is `path` a kubeconfig candidate: `*.yaml`, `*.yml`, `*.kubeconfig`, not hidden.
fn is_kubeconfig(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "kubeconfig")
        )
}

pub(super) fn members(dir: &Path, generator: &KubeconfigDirGenerator) -> Inventory {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            return Inventory::failed(format!(
                "kubeconfigDir {}: cannot read the directory: {e}",
                dir.display()
            ));
        }
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_kubeconfig(p))
        .take(MAX_FILES)
        .collect();
    paths.sort();
    let mut inventory = Inventory::members(Vec::new());
    let mut members = Vec::new();
    for path in paths {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match read(&path) {
            Ok(config) if config.kind.as_deref().is_some_and(|k| k != "Config") => {}
            Ok(config) if config.contexts.is_empty() => inventory
                .errors
                .push(format!("kubeconfigDir file {file}: has no contexts")),
            Ok(config) => members.extend(file_members(&path, &file, &config, generator)),
            Err(error) => inventory
                .errors
                .push(format!("kubeconfigDir file {file}: {error}")),
        }
    }
    inventory.members = Some(members);
    inventory
}

fn read(path: &Path) -> Result<Kubeconfig, String> {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "is {len} bytes; kubeconfig files are limited to {} KiB",
            MAX_FILE_BYTES / 1024
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 64,
            flow_nesting_limit: 64,
            max_nodes: 100_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
        },
        // A snippet would quote the file, tokens included.
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options::<Kubeconfig>(&text, options).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        format!("is not a kubeconfig{at}")
    })
}

/// The members one file yields.
fn file_members(
    path: &Path,
    file: &str,
    config: &Kubeconfig,
    generator: &KubeconfigDirGenerator,
) -> Vec<Member> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let member = |name: &str, context: Option<&NamedContext>| {
        let mut values = std::collections::BTreeMap::new();
        values.insert("kubeconfig".to_string(), absolute.display().to_string());
        values.insert("file".to_string(), file.to_string());
        values.insert(
            "context".to_string(),
            context.map(|c| c.name.clone()).unwrap_or_default(),
        );
        let info = context.and_then(|c| c.context.as_ref());
        values.insert(
            "namespace".to_string(),
            info.and_then(|i| i.namespace.clone())
                .unwrap_or_else(|| "default".into()),
        );
        let cluster = info
            .and_then(|i| i.cluster.as_deref())
            .and_then(|name| config.clusters.iter().find(|c| c.name == name));
        values.insert(
            "server".to_string(),
            cluster
                .and_then(|c| c.cluster.as_ref())
                .and_then(|c| c.server.clone())
                .unwrap_or_default(),
        );
        let extension = info
            .and_then(|i| i.extensions.iter().find(|e| e.name == MEMBER_EXTENSION))
            .and_then(|e| e.extension.clone())
            .unwrap_or_default();
        let mut labels = extension.labels;
        labels.extend(generator.labels.clone());
        Member {
            name: name.to_string(),
            labels,
            aliases: extension.aliases,
            values,
        }
    };
    if generator.per_context {
        return config
            .contexts
            .iter()
            .map(|c| member(&c.name, Some(c)))
            .collect();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let current = config
        .current_context
        .as_deref()
        .and_then(|name| config.contexts.iter().find(|c| c.name == name))
        .or(config.contexts.first());
    vec![member(&stem, current)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster: {server: 'https://a.example:6443'}\n- name: b\n  cluster: {server: 'https://b.example:6443'}\ncontexts:\n- name: ctx-a\n  context: {cluster: a, user: u, namespace: web}\n- name: ctx-b\n  context:\n    cluster: b\n    user: u\n    extensions:\n    - name: flotilla.dev/member\n      extension: {labels: {env: prod}, aliases: [prod-b]}\ncurrent-context: ctx-b\nusers:\n- name: u\n  user: {token: super-secret-token}\n";

    fn generator(per_context: bool) -> KubeconfigDirGenerator {
        KubeconfigDirGenerator {
            path: ".".into(),
            per_context,
            labels: [("source".to_string(), "files".to_string())].into(),
        }
    }

    #[test]
    fn one_member_per_file_uses_its_current_context_and_per_context_lists_them_all() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prod.yaml"), CONFIG).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a kubeconfig").unwrap();
        // A manifest beside them is not a kubeconfig: skipped, not a member.
        std::fs::write(
            dir.path().join("set.yaml"),
            "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServerSet\nmetadata: {name: s}\n",
        )
        .unwrap();
        let found = members(dir.path(), &generator(false));
        assert!(found.errors.is_empty(), "{:?}", found.errors);
        let members = found.members.unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].name, "prod");
        assert_eq!(members[0].values["context"], "ctx-b");
        assert_eq!(members[0].values["server"], "https://b.example:6443");
        assert!(members[0].values["kubeconfig"].ends_with("prod.yaml"));
        assert_eq!(members[0].labels["source"], "files");
        assert_eq!(
            members[0].labels["env"], "prod",
            "from the context's extension"
        );
        assert_eq!(members[0].aliases, ["prod-b"]);
        let members = members_of(dir.path(), true);
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["ctx-a", "ctx-b"]);
        assert_eq!(members[0].values["namespace"], "web");
    }

    fn members_of(dir: &Path, per_context: bool) -> Vec<Member> {
        members(dir, &generator(per_context)).members.unwrap()
    }

    #[test]
    fn a_broken_file_is_named_without_quoting_it_and_spares_the_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.yaml"), CONFIG).unwrap();
        std::fs::write(
            dir.path().join("bad.yaml"),
            "users: [{user: {token: leaked-token}}\ncontexts: {",
        )
        .unwrap();
        let found = members(dir.path(), &generator(false));
        assert_eq!(found.members.unwrap().len(), 1);
        assert_eq!(found.errors.len(), 1);
        assert!(found.errors[0].starts_with("kubeconfigDir file bad.yaml: is not a kubeconfig"));
        assert!(
            !found.errors[0].contains("leaked-token"),
            "{}",
            found.errors[0]
        );
        let missing = members(&dir.path().join("nope"), &generator(false));
        assert!(missing.members.is_none());
        assert!(missing.errors[0].contains("cannot read the directory"));
    }
}

//! The floors of the code, checked: data flows one way, source → fleet →
//! catalog → (policy) → gateway, with auth beside and the dial-out agent
//! (`flotilla agent`) on the source and fleet floors. A module may use what lies below it
//! and never what lies above; `auth` implements the fleet's credential trait,
//! so it may use the floors up to `fleet`, and only the gateway (and the
//! wiring at the top) uses `auth`. The test reads every file's `crate::`
//! paths, doc comments excluded.
//!
//! Inside the gateway the same holds between its files: each uses only
//! files below it (`src/gateway/README.md` lists the floors), so the
//! `super::` and `crate::gateway::` paths between them form no cycle (the
//! `relay/` folder counts as one file).

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Each floor and what it may use (besides itself).
    const FLOORS: &[(&str, &[&str])] = &[
        ("api", &[]),
        ("source", &["api"]),
        ("fleet", &["api", "source"]),
        ("catalog", &["api", "source", "fleet"]),
        ("policy", &["api", "source", "fleet", "catalog"]),
        ("auth", &["api", "source", "fleet"]),
        (
            "gateway",
            &["api", "source", "fleet", "catalog", "policy", "auth"],
        ),
        // The dial-out agent: a program of its own beside the gateway, made
        // of the manifest source and the fleet's agent protocol.
        ("agent", &["api", "source", "fleet"]),
    ];
    /// Modules of the crate a floor could name.
    const MODULES: &[&str] = &[
        "agent",
        "api",
        "source",
        "fleet",
        "catalog",
        "policy",
        "auth",
        "gateway",
        "cli",
        "app",
        "config",
        "sim",
        "telemetry",
    ];

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// `(file:line, module)` for every `crate::<module>` a floor under `src`
    /// may not use.
    fn violations(src: &Path) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (floor, allowed) in FLOORS {
            let mut paths = Vec::new();
            if src.join(floor).is_dir() {
                files(&src.join(floor), &mut paths);
            }
            for path in paths {
                let text = std::fs::read_to_string(&path).unwrap();
                for (number, line) in text.lines().enumerate() {
                    let code = line.trim_start();
                    if code.starts_with("//") {
                        continue;
                    }
                    for (at, _) in code.match_indices("crate::") {
                        let rest = &code[at + "crate::".len()..];
                        let module: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        let foreign = MODULES.contains(&module.as_str())
                            && module != *floor
                            && !allowed.contains(&module.as_str());
                        if foreign {
                            let shown = path.strip_prefix(src).unwrap_or(&path).display();
                            found.push((format!("src/{shown}:{}", number + 1), module));
                        }
                    }
                }
            }
        }
        found
    }

    #[test]
    fn no_floor_uses_one_above_it() {
        let found = violations(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
        assert!(
            found.is_empty(),
            "modules used from below (move the shared type down instead): {found:#?}"
        );
    }

    /// The gateway file each gateway file names (`super::x`,
    /// `crate::gateway::x`), comments excluded; `relay/` is one node.
    fn gateway_graph(dir: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut paths = Vec::new();
        files(dir, &mut paths);
        let node = |path: &Path| -> String {
            let relative = path.strip_prefix(dir).unwrap_or(path);
            let first = relative
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().to_string());
            first
                .unwrap_or_default()
                .trim_end_matches(".rs")
                .to_string()
        };
        let nodes: std::collections::BTreeSet<String> = paths.iter().map(|p| node(p)).collect();
        let mut graph = std::collections::BTreeMap::<String, Vec<String>>::new();
        for path in &paths {
            let from = node(path);
            let in_relay = from == "relay";
            let text = std::fs::read_to_string(path).unwrap();
            for line in text.lines() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                // In relay/, `super::` is relay itself; its way out is `super::super::`.
                let prefixes: &[&str] = if in_relay {
                    &["super::super::", "crate::gateway::"]
                } else {
                    &["super::", "crate::gateway::"]
                };
                for prefix in prefixes {
                    for (at, _) in code.match_indices(prefix) {
                        let rest = &code[at + prefix.len()..];
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if name != from && nodes.contains(&name) {
                            let edges = graph.entry(from.clone()).or_default();
                            if !edges.contains(&name) {
                                edges.push(name);
                            }
                        }
                    }
                }
            }
        }
        graph
    }

    /// A cycle in `graph`, as the files along it, if there is one.
    fn cycle(graph: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
        fn visit(
            node: &str,
            graph: &std::collections::BTreeMap<String, Vec<String>>,
            path: &mut Vec<String>,
            done: &mut std::collections::BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|n| n == node) {
                let mut found = path[at..].to_vec();
                found.push(node.to_string());
                return Some(found);
            }
            if done.contains(node) {
                return None;
            }
            path.push(node.to_string());
            for next in graph.get(node).into_iter().flatten() {
                if let Some(found) = visit(next, graph, path, done) {
                    return Some(found);
                }
            }
            path.pop();
            done.insert(node.to_string());
            None
        }
        let mut done = std::collections::BTreeSet::new();
        graph
            .keys()
            .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
    }

    #[test]
    fn the_gateway_folder_has_no_cycle() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gateway");
        let graph = gateway_graph(&dir);
        assert!(
            graph.contains_key("handler"),
            "the graph was read: {graph:?}"
        );
        assert_eq!(cycle(&graph), None, "files that use each other: {graph:#?}");
    }

    #[test]
    fn a_cycle_between_gateway_files_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("relay")).unwrap();
        std::fs::write(dir.path().join("state.rs"), "use super::view::View;\n").unwrap();
        std::fs::write(
            dir.path().join("view.rs"),
            "// super::relay in a comment\nuse super::settings::S;\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("settings.rs"), "").unwrap();
        std::fs::write(
            dir.path().join("relay/mod.rs"),
            "use super::super::state::GatewayState;\nuse super::call;\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("relay/call.rs"), "").unwrap();
        assert_eq!(cycle(&gateway_graph(dir.path())), None);
        std::fs::write(
            dir.path().join("settings.rs"),
            "use crate::gateway::relay::Relay;\n",
        )
        .unwrap();
        assert_eq!(
            cycle(&gateway_graph(dir.path())),
            Some(vec![
                "relay".into(),
                "state".into(),
                "view".into(),
                "settings".into(),
                "relay".into()
            ])
        );
    }

    #[test]
    fn an_upward_use_is_found_and_comments_are_not() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("api")).unwrap();
        std::fs::create_dir_all(src.path().join("gateway")).unwrap();
        std::fs::write(
            src.path().join("api/types.rs"),
            "//! Like crate::gateway in a comment.\nuse crate::api::X;\nuse crate::auth::UserIdentity;\n",
        )
        .unwrap();
        std::fs::write(
            src.path().join("gateway/http.rs"),
            "use crate::auth::AuthServer;\n",
        )
        .unwrap();
        assert_eq!(
            violations(src.path()),
            [("src/api/types.rs:3".to_string(), "auth".to_string())]
        );
    }
}

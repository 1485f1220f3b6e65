//! The floors of the code, checked: data flows one way, source → fleet →
//! catalog → gateway, with auth beside. A module may use what lies below it
//! and never what lies above; `auth` implements the fleet's credential trait,
//! so it may use the floors up to `fleet`, and only the gateway (and the
//! wiring at the top) uses `auth`. The test reads every file's `crate::`
//! paths, doc comments excluded.

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Each floor and what it may use (besides itself).
    const FLOORS: &[(&str, &[&str])] = &[
        ("api", &[]),
        ("source", &["api"]),
        ("fleet", &["api", "source"]),
        ("catalog", &["api", "source", "fleet"]),
        ("auth", &["api", "source", "fleet"]),
        ("gateway", &["api", "source", "fleet", "catalog", "auth"]),
    ];
    /// Modules of the crate a floor could name.
    const MODULES: &[&str] = &[
        "api", "source", "fleet", "catalog", "auth", "gateway", "cli", "app", "config", "sim",
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

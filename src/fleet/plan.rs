//! The fleet's diff as a plain function: from the servers running and the
//! servers desired, what to do to each. [`super::Fleet::apply`] carries the
//! plan out; keeping the decision here makes it testable as a table.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::source::{DesiredFleet, DesiredServer};

/// One step toward the desired fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// No longer declared: stop it.
    Remove(String),
    /// Newly declared: start it.
    Add(String),
    /// Its connection changed (spec or Secret values): stop it and start the
    /// new version (keeping what it listed until the new one lists).
    Reconnect(String),
    /// Only what is not the connection changed (labels, origin, generation,
    /// `spec.limits`): update it in place, nothing reconnects.
    Relabel(String),
}

/// The changes from `running` to `desired`, removals first, then by name.
pub fn plan(running: &BTreeMap<String, Arc<DesiredServer>>, desired: &DesiredFleet) -> Vec<Change> {
    let mut changes: Vec<Change> = running
        .keys()
        .filter(|name| !desired.servers.contains_key(*name))
        .map(|name| Change::Remove(name.clone()))
        .collect();
    for (name, want) in &desired.servers {
        match running.get(name) {
            None => changes.push(Change::Add(name.clone())),
            Some(current) if !current.same_connection(want) => {
                changes.push(Change::Reconnect(name.clone()))
            }
            Some(current) if **current != *want => changes.push(Change::Relabel(name.clone())),
            Some(_) => {}
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SecretValue;

    fn server(name: &str, url: &str) -> DesiredServer {
        DesiredServer {
            name: name.into(),
            namespace: "default".into(),
            labels: Default::default(),
            generation: None,
            spec: crate::api::MCPServerSpec {
                url: Some(url.into()),
                ..Default::default()
            },
            secret_headers: Default::default(),
            client_credentials: None,
            agent_credential: None,
            origin: format!("{name}.yaml#0"),
        }
    }

    fn running(servers: &[DesiredServer]) -> BTreeMap<String, Arc<DesiredServer>> {
        servers
            .iter()
            .map(|s| (s.name.clone(), Arc::new(s.clone())))
            .collect()
    }

    fn desired(servers: &[DesiredServer]) -> DesiredFleet {
        DesiredFleet {
            servers: servers
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            problems: Vec::new(),
            policies: Default::default(),
            sets: Default::default(),
        }
    }

    #[test]
    fn each_difference_gets_the_least_disruptive_change() {
        let a = server("a", "http://a/mcp");
        let b = server("b", "http://b/mcp");
        let mut relabeled = a.clone();
        relabeled.labels.insert("env".into(), "prod".into());
        relabeled.origin = "moved.yaml#1".into();
        let mut respec = a.clone();
        respec.spec.url = Some("http://a2/mcp".into());
        let mut limited = a.clone();
        limited.spec.limits = Some(crate::api::LimitsSpec {
            max_concurrency: Some(2),
            call_timeout: Some(5),
            ..Default::default()
        });
        let mut limited_and_moved = limited.clone();
        limited_and_moved.spec.url = Some("http://a2/mcp".into());
        let mut rotated = a.clone();
        rotated.secret_headers.insert(
            "Authorization".into(),
            SecretValue::new("Bearer new".into()),
        );
        /// (case, running, desired, expected changes)
        type Case<'a> = (&'a str, Vec<DesiredServer>, Vec<DesiredServer>, Vec<Change>);
        let cases: Vec<Case> = vec![
            (
                "nothing changed",
                vec![a.clone(), b.clone()],
                vec![a.clone(), b.clone()],
                vec![],
            ),
            (
                "added",
                vec![a.clone()],
                vec![a.clone(), b.clone()],
                vec![Change::Add("b".into())],
            ),
            (
                "removed",
                vec![a.clone(), b.clone()],
                vec![b.clone()],
                vec![Change::Remove("a".into())],
            ),
            (
                "labels and origin only",
                vec![a.clone()],
                vec![relabeled],
                vec![Change::Relabel("a".into())],
            ),
            (
                "limits only: applied in place",
                vec![a.clone()],
                vec![limited.clone()],
                vec![Change::Relabel("a".into())],
            ),
            (
                "limits removed: applied in place",
                vec![limited.clone()],
                vec![a.clone()],
                vec![Change::Relabel("a".into())],
            ),
            (
                "limits and the url changed",
                vec![a.clone()],
                vec![limited_and_moved],
                vec![Change::Reconnect("a".into())],
            ),
            (
                "spec changed",
                vec![a.clone()],
                vec![respec],
                vec![Change::Reconnect("a".into())],
            ),
            (
                "a Secret value rotated",
                vec![a.clone()],
                vec![rotated],
                vec![Change::Reconnect("a".into())],
            ),
            (
                "removals come first",
                vec![b.clone()],
                vec![a.clone()],
                vec![Change::Remove("b".into()), Change::Add("a".into())],
            ),
            ("empty to empty", vec![], vec![], vec![]),
        ];
        for (case, now, want, expected) in cases {
            assert_eq!(plan(&running(&now), &desired(&want)), expected, "{case}");
        }
    }
}

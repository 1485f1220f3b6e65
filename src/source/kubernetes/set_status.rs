//! The status an MCPServerSet object should have, from the desired fleet the
//! source published: how many members it generated (and their names), and
//! every error of its generators and members. `Ready` is True when there
//! are none.

use kube::core::DeserializeGuard;
use kube::{Resource, ResourceExt};

use super::desired_sets::set_origin_of;
use crate::api::{Condition, MCPServerSet, MCPServerSetStatus};
use crate::source::DesiredFleet;

/// Member names listed in status; the count is always complete.
const LISTED_MEMBERS: usize = 100;
/// Errors listed in status (the first ones; the message says how many more).
const LISTED_ERRORS: usize = 20;

/// The status `object` should have under `fleet`.
pub fn desired_set_status(
    object: &DeserializeGuard<MCPServerSet>,
    fleet: &DesiredFleet,
) -> MCPServerSetStatus {
    let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
    let origin = set_origin_of(&namespace, &name);
    let members = fleet
        .sets
        .get(&format!("{namespace}/{name}"))
        .map(|set| set.members.clone())
        .unwrap_or_default();
    let errors: Vec<String> = fleet
        .problems
        .iter()
        .filter(|p| p.origin == origin)
        .map(|p| p.message.clone())
        .collect();
    let generation = object.meta().generation;
    let (status, reason, message) = match errors.first() {
        None => (
            "True",
            "Generated",
            format!("{} member(s) generated", members.len()),
        ),
        Some(first) => (
            "False",
            "GeneratorErrors",
            match errors.len() {
                1 => first.clone(),
                n => format!("{first} (and {} more)", n - 1),
            },
        ),
    };
    MCPServerSetStatus {
        members: u32::try_from(members.len()).unwrap_or(u32::MAX),
        member_names: members.into_iter().take(LISTED_MEMBERS).collect(),
        errors: errors.into_iter().take(LISTED_ERRORS).collect(),
        observed_generation: generation,
        conditions: vec![Condition::ready(status, reason, message, generation)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{DesiredSet, ManifestProblem};

    fn object(generation: i64) -> DeserializeGuard<MCPServerSet> {
        let mut set = MCPServerSet::new("hub", Default::default());
        set.metadata.namespace = Some("ops".into());
        set.metadata.generation = Some(generation);
        DeserializeGuard(Ok(set))
    }

    fn fleet(members: &[&str], errors: &[&str]) -> DesiredFleet {
        let mut fleet = DesiredFleet::default();
        fleet.sets.insert(
            "ops/hub".into(),
            DesiredSet {
                name: "hub".into(),
                namespace: "ops".into(),
                members: members.iter().map(|m| m.to_string()).collect(),
                origin: set_origin_of("ops", "hub"),
                ..Default::default()
            },
        );
        for error in errors {
            fleet.problems.push(ManifestProblem {
                origin: set_origin_of("ops", "hub"),
                server: None,
                policy: None,
                set: Some("hub".into()),
                message: error.to_string(),
            });
        }
        fleet
    }

    #[test]
    fn members_are_counted_and_errors_make_the_set_not_ready() {
        let good = desired_set_status(&object(3), &fleet(&["a-k8s", "b-k8s"], &[]));
        assert_eq!(good.members, 2);
        assert_eq!(good.member_names, ["a-k8s", "b-k8s"]);
        assert_eq!(good.observed_generation, Some(3));
        assert_eq!(
            (
                good.conditions[0].status.as_str(),
                good.conditions[0].reason.as_str()
            ),
            ("True", "Generated")
        );
        let bad = desired_set_status(
            &object(4),
            &fleet(
                &["a-k8s"],
                &["generators[0]: refused", "member \"b\": bad name"],
            ),
        );
        assert_eq!(bad.members, 1);
        assert_eq!(bad.errors.len(), 2);
        assert_eq!(bad.conditions[0].status, "False");
        assert_eq!(bad.conditions[0].reason, "GeneratorErrors");
        assert_eq!(
            bad.conditions[0].message,
            "generators[0]: refused (and 1 more)"
        );
    }
}

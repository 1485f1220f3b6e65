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
        conditions: vec![Condition {
            condition_type: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: None,
            observed_generation: generation,
        }],
    }
}

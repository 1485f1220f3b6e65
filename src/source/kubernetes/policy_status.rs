//! The status a ToolPolicy object should have, from the desired fleet the
//! source published: `Active` with its rule count when its rules are in
//! force, `Invalid` with the reason when they are not. A broken edit of a
//! policy that was in force stays `Active` (its last good rules apply)
//! while its `Ready` condition says the current spec is not in force.

use kube::core::DeserializeGuard;
use kube::{Resource, ResourceExt};

use super::desired::policy_origin_of;
use crate::api::{Condition, ToolPolicy, ToolPolicyStatus};
use crate::source::DesiredFleet;

/// The status `object` should have under `fleet`.
pub fn desired_policy_status(
    object: &DeserializeGuard<ToolPolicy>,
    fleet: &DesiredFleet,
) -> ToolPolicyStatus {
    let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
    let origin = policy_origin_of(&namespace, &name);
    let in_force = fleet.policies.get(&format!("{namespace}/{name}"));
    let problem = fleet
        .problems
        .iter()
        .find(|p| p.origin == origin)
        .map(|p| p.message.clone());
    let rule_count = in_force.map_or(0, |p| p.spec.rules.len());
    let (state, ready, reason, message) = match (in_force, &problem) {
        (Some(_), None) => (
            "Active",
            "True",
            "Active",
            format!("{rule_count} rule(s) in force"),
        ),
        (Some(_), Some(problem)) => (
            "Active",
            "False",
            "InvalidSpec",
            format!("{problem}; its last good {rule_count} rule(s) stay in force"),
        ),
        (None, problem) => (
            "Invalid",
            "False",
            "InvalidSpec",
            problem
                .clone()
                .unwrap_or_else(|| "not served by this gateway".into()),
        ),
    };
    let generation = object.meta().generation;
    ToolPolicyStatus {
        state: Some(state.into()),
        last_error: problem,
        rule_count: u32::try_from(rule_count).unwrap_or(u32::MAX),
        observed_generation: generation,
        conditions: vec![Condition::ready(ready, reason, message, generation)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{DesiredPolicy, ManifestProblem};

    fn object(name: &str, generation: i64) -> DeserializeGuard<ToolPolicy> {
        let mut policy = ToolPolicy::new(name, Default::default());
        policy.metadata.namespace = Some("ops".into());
        policy.metadata.generation = Some(generation);
        DeserializeGuard(Ok(policy))
    }

    fn in_force(fleet: &mut DesiredFleet, name: &str, rules: usize) {
        let spec = crate::api::ToolPolicySpec {
            rules: vec![Default::default(); rules],
        };
        fleet.policies.insert(
            format!("ops/{name}"),
            DesiredPolicy {
                name: name.into(),
                namespace: "ops".into(),
                generation: Some(1),
                spec,
                origin: policy_origin_of("ops", name),
            },
        );
    }

    fn problem(fleet: &mut DesiredFleet, name: &str) {
        fleet.problems.push(ManifestProblem {
            origin: policy_origin_of("ops", name),
            server: None,
            policy: Some(name.into()),
            set: None,
            message: "spec.rules[0].match.labels: bad".into(),
        });
    }

    #[test]
    fn active_broken_and_invalid_policies_say_so() {
        let mut fleet = DesiredFleet::default();
        in_force(&mut fleet, "good", 3);
        in_force(&mut fleet, "kept", 2);
        problem(&mut fleet, "kept");
        problem(&mut fleet, "new");

        let good = desired_policy_status(&object("good", 4), &fleet);
        assert_eq!(good.state.as_deref(), Some("Active"));
        assert_eq!(good.rule_count, 3);
        assert_eq!(good.observed_generation, Some(4));
        assert_eq!(good.conditions[0].status, "True");

        let kept = desired_policy_status(&object("kept", 2), &fleet);
        assert_eq!(kept.state.as_deref(), Some("Active"));
        assert_eq!(kept.conditions[0].status, "False");
        assert!(kept.conditions[0].message.contains("last good 2 rule(s)"));
        assert!(kept.last_error.unwrap().contains("spec.rules[0]"));

        let new = desired_policy_status(&object("new", 1), &fleet);
        assert_eq!(new.state.as_deref(), Some("Invalid"));
        assert_eq!(new.rule_count, 0);
        assert_eq!(new.conditions[0].reason, "InvalidSpec");
    }
}

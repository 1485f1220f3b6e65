//! From MCPServerSet objects to the sets discovery expands: a pure function.
//! An object that fails to parse keeps its last good spec (its members stay)
//! and is reported under its own name.

use std::collections::HashMap;
use std::sync::Arc;

use kube::ResourceExt;
use kube::core::DeserializeGuard;

use crate::api::MCPServerSet;
use crate::source::discovery::SetInput;
use crate::source::{DesiredFleet, ManifestProblem};

/// Where a set came from, for messages: `MCPServerSet team-a/clusters`.
pub fn set_origin_of(namespace: &str, name: &str) -> String {
    format!("MCPServerSet {namespace}/{name}")
}

/// The sets to expand; broken objects are reported into `fleet` and keep
/// their last good spec. `last_good` is keyed `namespace/name`.
pub(super) fn desired_sets(
    objects: &[Arc<DeserializeGuard<MCPServerSet>>],
    last_good: &mut HashMap<String, SetInput>,
    fleet: &mut DesiredFleet,
) -> Vec<SetInput> {
    let mut sets = Vec::new();
    for object in objects {
        let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let key = format!("{namespace}/{name}");
        let origin = set_origin_of(&namespace, &name);
        match &object.0 {
            Ok(set) => {
                let input = SetInput {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    generation: set.metadata.generation,
                    spec: set.spec.clone(),
                    origin,
                    base_dir: None,
                };
                last_good.insert(key, input.clone());
                sets.push(input);
            }
            Err(invalid) => {
                if let Some(previous) = last_good.get(&key) {
                    sets.push(previous.clone());
                }
                fleet.problems.push(ManifestProblem {
                    origin,
                    server: None,
                    policy: None,
                    set: Some(name),
                    message: format!("invalid object: {}", invalid.error),
                });
            }
        }
    }
    // Deleted objects are forgotten.
    let present: std::collections::HashSet<String> = objects
        .iter()
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    last_good.retain(|key, _| present.contains(key));
    sets
}

//! The `managedClusters` generator: Open Cluster Management `ManagedCluster`
//! objects (`cluster.open-cluster-management.io/v1`, cluster-scoped) on the
//! hub the gateway runs against, filtered by a label selector. The cluster's
//! name and labels flow into the template; its `flotilla.dev/aliases`
//! annotation into the family's aliases. The watch itself belongs to the
//! Kubernetes source, which offers what it has seen as a [`ManagedClusterSource`].

use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;

use super::{Inventory, Member, aliases_from};
use crate::api::{LabelSelector, ManagedClustersGenerator};

/// The ManagedClusters a source has seen.
pub trait ManagedClusterSource {
    /// Every ManagedCluster, or why they cannot be listed (no OCM CRD on the
    /// API server, no permission, not listed yet).
    fn managed_clusters(&self) -> Result<Vec<Arc<DynamicObject>>, String>;
}

/// `cluster.open-cluster-management.io/v1` `ManagedCluster`, plural `managedclusters`.
pub fn managed_cluster_api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.open-cluster-management.io", "v1", "ManagedCluster"),
        "managedclusters",
    )
}

pub(super) fn members(
    source: &dyn ManagedClusterSource,
    generator: &ManagedClustersGenerator,
) -> Inventory {
    let selector = match LabelSelector::parse(generator.selector.as_deref().unwrap_or("")) {
        Ok(selector) => selector,
        Err(error) => return Inventory::failed(format!("managedClusters.selector: {error}")),
    };
    let clusters = match source.managed_clusters() {
        Ok(clusters) => clusters,
        Err(error) => return Inventory::failed(error),
    };
    let mut members: Vec<Member> = clusters
        .iter()
        .filter_map(|cluster| member(cluster))
        .filter(|member| selector.matches(&member.labels))
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Inventory::members(members)
}

/// One ManagedCluster as a member: `{{name}}`, `{{labels.*}}`, `{{url}}`
/// (its first `managedClusterClientConfigs` URL, or empty) and
/// `{{available}}` (its `ManagedClusterConditionAvailable` status).
fn member(cluster: &DynamicObject) -> Option<Member> {
    let name = cluster.metadata.name.clone()?;
    let url = cluster.data["spec"]["managedClusterClientConfigs"][0]["url"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let available = cluster.data["status"]["conditions"]
        .as_array()
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c["type"] == "ManagedClusterConditionAvailable")
        })
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
        .to_string();
    Some(Member {
        name,
        labels: cluster.metadata.labels.clone().unwrap_or_default(),
        aliases: aliases_from(cluster.metadata.annotations.as_ref()),
        values: [
            ("url".to_string(), url),
            ("available".to_string(), available),
        ]
        .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seen(Vec<serde_json::Value>);

    impl ManagedClusterSource for Seen {
        fn managed_clusters(&self) -> Result<Vec<Arc<DynamicObject>>, String> {
            Ok(self
                .0
                .iter()
                .map(|v| Arc::new(serde_json::from_value(v.clone()).unwrap()))
                .collect())
        }
    }

    fn cluster(name: &str, env: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
            "metadata": {"name": name, "labels": {"env": env},
                         "annotations": {"flotilla.dev/aliases": "first, second,"}},
            "spec": {"hubAcceptsClient": true,
                     "managedClusterClientConfigs": [{"url": format!("https://{name}:6443")}]},
            "status": {"conditions": [{"type": "ManagedClusterConditionAvailable", "status": "True"}]}
        })
    }

    #[test]
    fn the_selector_picks_clusters_and_their_labels_aliases_and_url_flow_in() {
        let seen = Seen(vec![
            cluster("b", "prod"),
            cluster("a", "prod"),
            cluster("c", "dev"),
        ]);
        let generator = ManagedClustersGenerator {
            selector: Some("env=prod".into()),
        };
        let members = members(&seen, &generator).members.unwrap();
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(members[0].labels["env"], "prod");
        assert_eq!(members[0].aliases, ["first", "second"]);
        assert_eq!(members[0].values["url"], "https://a:6443");
        assert_eq!(members[0].values["available"], "True");
        let bad = ManagedClustersGenerator {
            selector: Some("=x".into()),
        };
        assert!(members_err(&seen, &bad).starts_with("managedClusters.selector"));
    }

    fn members_err(seen: &Seen, generator: &ManagedClustersGenerator) -> String {
        super::members(seen, generator).errors.remove(0)
    }
}

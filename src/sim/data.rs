//! Synthetic cluster contents, derived deterministically from the cluster's
//! name so each simulated cluster differs and every run agrees with itself.

use serde::Serialize;

const NAMESPACES: &[&str] = &["kube-system", "monitoring", "payments", "web"];
const WORKLOADS: &[&str] = &[
    "api",
    "worker",
    "frontend",
    "coredns",
    "prometheus",
    "grafana",
    "ingress",
    "redis",
];
const PHASES: &[&str] = &[
    "Running",
    "Running",
    "Running",
    "Pending",
    "CrashLoopBackOff",
];
const PROVIDERS: &[(&str, &str)] = &[
    ("aws", "eu-west-1"),
    ("azure", "westeurope"),
    ("gcp", "us-central1"),
];

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub phase: String,
    pub restarts: u32,
    pub node: String,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct PodList {
    pub cluster: String,
    pub pods: Vec<Pod>,
}

pub struct Cluster {
    pub name: String,
    pub version: String,
    pub provider: &'static str,
    pub region: &'static str,
    pub nodes: u32,
    pub pods: Vec<Pod>,
}

/// FNV-1a: a stable seed from the cluster name.
fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// xorshift64*: small deterministic pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

impl Cluster {
    pub fn generate(name: &str) -> Self {
        let mut rng = Rng(seed(name) | 1);
        let nodes = 2 + (rng.next() % 4) as u32;
        let (provider, region) = *rng.pick(PROVIDERS);
        let pod_count = 5 + (rng.next() % 6) as usize;
        let pods = (0..pod_count)
            .map(|i| {
                let workload = rng.pick(WORKLOADS);
                let suffix = format!("{:05x}", rng.next() & 0xfffff);
                Pod {
                    name: format!("{workload}-{suffix}"),
                    namespace: NAMESPACES[i % NAMESPACES.len()].to_string(),
                    phase: rng.pick(PHASES).to_string(),
                    restarts: (rng.next() % 4) as u32 * (i as u32 % 2),
                    node: format!("{name}-node-{}", rng.next() % nodes as u64),
                }
            })
            .collect();
        Self {
            name: name.to_string(),
            version: format!("v1.{}.{}", 31 + rng.next() % 3, rng.next() % 8),
            provider,
            region,
            nodes,
            pods,
        }
    }

    pub fn pods_in(&self, namespace: Option<&str>) -> PodList {
        PodList {
            cluster: self.name.clone(),
            pods: self
                .pods
                .iter()
                .filter(|p| namespace.is_none_or(|ns| p.namespace == ns))
                .cloned()
                .collect(),
        }
    }

    pub fn events_text(&self, namespace: Option<&str>) -> String {
        let mut lines = vec![format!("Events in cluster {}:", self.name)];
        for pod in self
            .pods
            .iter()
            .filter(|p| namespace.is_none_or(|ns| p.namespace == ns))
        {
            let (kind, reason, message) = match pod.phase.as_str() {
                "CrashLoopBackOff" => {
                    ("Warning", "BackOff", "Back-off restarting failed container")
                }
                "Pending" => (
                    "Warning",
                    "FailedScheduling",
                    "0/3 nodes are available: insufficient cpu",
                ),
                _ => ("Normal", "Started", "Started container"),
            };
            lines.push(format!(
                "{kind}\t{reason}\tpod/{}/{}\t{message}",
                pod.namespace, pod.name
            ));
        }
        lines.join("\n")
    }

    pub fn logs(&self, namespace: &str, pod: &str, tail: u32) -> Option<String> {
        let pod = self
            .pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == pod)?;
        let mut rng = Rng(seed(&pod.name) | 1);
        let lines: Vec<String> = (0..tail.min(200))
            .map(|i| {
                let level = if pod.phase == "CrashLoopBackOff" && i % 3 == 0 {
                    "ERROR"
                } else {
                    "INFO"
                };
                format!(
                    "2026-11-21T10:{:02}:{:02}Z {level} {} request_id={:08x}",
                    i / 60,
                    i % 60,
                    pod.name,
                    rng.next() as u32
                )
            })
            .collect();
        Some(lines.join("\n"))
    }

    pub fn info_text(&self) -> String {
        format!(
            "cluster: {}\nkubernetes: {}\nprovider: {}\nregion: {}\nnodes: {}\npods: {}",
            self.name,
            self.version,
            self.provider,
            self.region,
            self.nodes,
            self.pods.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Cluster;

    #[test]
    fn clusters_differ_by_name_and_agree_with_themselves() {
        let a = Cluster::generate("cluster-a");
        let b = Cluster::generate("cluster-b");
        assert_eq!(a.info_text(), Cluster::generate("cluster-a").info_text());
        assert_ne!(a.pods[0].name, b.pods[0].name);
        let pod = &a.pods[0];
        assert!(
            a.logs(&pod.namespace, &pod.name, 5)
                .unwrap()
                .lines()
                .count()
                == 5
        );
        assert!(a.logs("nope", &pod.name, 5).is_none());
    }
}

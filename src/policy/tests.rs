//! Table tests of rule evaluation: one fleet, one policy per case, the
//! verdict for each (caller, instance, tool).

use rmcp::model::ToolAnnotations;

use super::*;
use crate::api::ToolPolicySpec;
use crate::catalog::Instance;

fn facts(server: &str, family: Option<&str>, labels: &[(&str, &str)]) -> ServerFacts {
    let labels: std::collections::BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ServerFacts {
        family: family.map(|f| {
            (
                f.to_string(),
                Instance {
                    server: server.into(),
                    instance: server.trim_end_matches("-k8s").to_string(),
                    aliases: vec![format!("{server}-alias")],
                    labels: labels.clone(),
                },
            )
        }),
        labels,
        task_extension: false,
    }
}

fn policy(yaml: &str) -> Policy {
    let spec: ToolPolicySpec = serde_saphyr::from_str(yaml).expect("test policy parses");
    let errors = crate::api::validate_policy("p", &spec);
    assert!(errors.is_empty(), "{errors:?}");
    Policy::compile(&[DesiredPolicy {
        name: "p".into(),
        namespace: "default".into(),
        generation: None,
        spec,
        origin: "policy.yaml#0".into(),
    }])
}

fn user(subject: &str, groups: &[&str], client: Option<&str>) -> UserIdentity {
    UserIdentity {
        key: crate::api::UserKey {
            issuer: "https://idp".into(),
            subject: subject.into(),
        },
        display_name: None,
        id_token: None,
        expires_at: None,
        source: crate::api::IdentitySource::GatewayLogin,
        client: client.map(str::to_string),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn read_only() -> ToolAnnotations {
    ToolAnnotations::new().read_only(true)
}

fn destructive() -> ToolAnnotations {
    ToolAnnotations::new().read_only(false).destructive(true)
}

fn additive() -> ToolAnnotations {
    ToolAnnotations::new().read_only(false).destructive(false)
}

/// What `who` gets calling `tool` (with `annotations`) on `server`.
fn verdict(
    policy: &Policy,
    who: Option<&UserIdentity>,
    server: &ServerFacts,
    tool: &str,
    annotations: Option<&ToolAnnotations>,
) -> &'static str {
    let class = policy.classify(&Who::of(who));
    let name = server
        .family
        .as_ref()
        .map(|(_, i)| i.server.to_string())
        .unwrap_or_else(|| "plain".into());
    match policy.decide(
        &class,
        &Target {
            server: &name,
            facts: server,
            tool,
            annotations,
        },
    ) {
        Verdict::Allow => "allow",
        Verdict::Deny {
            read_only: false, ..
        } => "deny",
        Verdict::Deny {
            read_only: true, ..
        } => "deny-read-only",
        Verdict::Confirm { .. } => "confirm",
    }
}

const PROD_READ_ONLY_EXCEPT_SRE: &str = r#"
rules:
- name: prod-read-only
  effect: readOnly
  match: {labels: env=prod}
  except: {groups: [sre]}
"#;

#[test]
fn prod_is_read_only_except_for_sre() {
    let policy = policy(PROD_READ_ONLY_EXCEPT_SRE);
    let prod = facts("prod-k8s", Some("kubernetes"), &[("env", "prod")]);
    let dev_cluster = facts("dev-k8s", Some("kubernetes"), &[("env", "dev")]);
    let (sre, dev) = (user("alice", &["sre"], None), user("bob", &["dev"], None));
    let cases = [
        (
            Some(&dev),
            &prod,
            "delete_pod",
            Some(destructive()),
            "deny-read-only",
        ),
        (Some(&dev), &prod, "list_pods", Some(read_only()), "allow"),
        (Some(&dev), &prod, "unannotated", None, "deny-read-only"),
        (
            Some(&dev),
            &dev_cluster,
            "delete_pod",
            Some(destructive()),
            "allow",
        ),
        (
            Some(&sre),
            &prod,
            "delete_pod",
            Some(destructive()),
            "allow",
        ),
        (
            None,
            &prod,
            "delete_pod",
            Some(destructive()),
            "deny-read-only",
        ),
        (None, &prod, "list_pods", Some(read_only()), "allow"),
    ];
    for (who, server, tool, annotations, want) in cases {
        assert_eq!(
            verdict(&policy, who, server, tool, annotations.as_ref()),
            want,
            "{who:?} {tool} on {server:?}"
        );
    }
}

#[test]
fn deny_wins_allow_lifts_read_only_and_confirm_read_only_beats_confirm() {
    let policy = policy(
        r#"
rules:
- {name: all-confirm, effect: confirm}
- {name: prod-ro, effect: readOnly, match: {labels: env=prod}}
- {name: sre-allow, effect: allow, match: {groups: [sre]}}
- {name: no-exec, effect: deny, match: {tools: ["exec_*"]}}
"#,
    );
    let prod = facts("prod-k8s", Some("kubernetes"), &[("env", "prod")]);
    let dev_cluster = facts("dev-k8s", Some("kubernetes"), &[("env", "dev")]);
    let (sre, dev) = (user("alice", &["sre"], None), user("bob", &["dev"], None));
    let cases = [
        // deny wins over allow
        (&sre, &prod, "exec_pod", Some(read_only()), "deny"),
        // allow lifts readOnly and confirm
        (&sre, &prod, "delete_pod", Some(destructive()), "allow"),
        // readOnly beats confirm
        (
            &dev,
            &prod,
            "delete_pod",
            Some(destructive()),
            "deny-read-only",
        ),
        // confirm: destructive tools only
        (
            &dev,
            &dev_cluster,
            "delete_pod",
            Some(destructive()),
            "confirm",
        ),
        (&dev, &dev_cluster, "scale", Some(additive()), "allow"),
        (&dev, &dev_cluster, "unannotated", None, "confirm"),
        (&dev, &dev_cluster, "list_pods", Some(read_only()), "allow"),
    ];
    for (who, server, tool, annotations, want) in cases {
        assert_eq!(
            verdict(&policy, Some(who), server, tool, annotations.as_ref()),
            want,
            "{} {tool} on {server:?}",
            who.key.subject
        );
    }
}

#[test]
fn every_condition_narrows_the_rule() {
    let dev = user("bob", &["team-payments"], Some("claude-desktop"));
    let prod = facts(
        "prod-k8s",
        Some("kubernetes"),
        &[("env", "prod"), ("region", "eu")],
    );
    let plain = facts("plain", None, &[("env", "prod")]);
    let d = Some(destructive());
    let cases: [(&str, &ServerFacts, &str, &str); 16] = [
        ("{subjects: [bob]}", &prod, "t", "deny"),
        ("{subjects: [b*]}", &prod, "t", "deny"),
        ("{subjects: [carol]}", &prod, "t", "allow"),
        ("{groups: [team-*]}", &prod, "t", "deny"),
        ("{groups: [sre]}", &prod, "t", "allow"),
        ("{clients: [claude-*]}", &prod, "t", "deny"),
        ("{clients: [cursor]}", &prod, "t", "allow"),
        ("{anonymous: true}", &prod, "t", "allow"),
        ("{anonymous: false}", &prod, "t", "deny"),
        ("{families: [kubernetes]}", &plain, "t", "allow"),
        ("{servers: [prod-*]}", &prod, "t", "deny"),
        ("{instances: [prod]}", &prod, "t", "deny"),
        ("{instances: [prod-k8s-alias]}", &prod, "t", "deny"),
        ("{instances: [prod]}", &plain, "t", "allow"),
        ("{labels: \"env=prod,region!=eu\"}", &prod, "t", "allow"),
        ("{tools: [delete_*]}", &prod, "delete_pod", "deny"),
    ];
    for (matches, server, tool, want) in cases {
        let policy = policy(&format!("rules: [{{effect: deny, match: {matches}}}]"));
        assert_eq!(
            verdict(&policy, Some(&dev), server, tool, d.as_ref()),
            want,
            "match {matches}"
        );
    }
    // Anonymous callers match only rules without caller conditions.
    let groups = policy("rules: [{effect: deny, match: {groups: ['*']}}]");
    assert_eq!(verdict(&groups, None, &prod, "t", d.as_ref()), "allow");
}

#[test]
fn annotation_conditions_apply_the_specs_defaults() {
    let prod = facts("prod-k8s", Some("kubernetes"), &[]);
    let policy = policy(
        "rules: [{effect: deny, match: {annotations: {destructiveHint: true, openWorldHint: true}}}]",
    );
    // Absent hints: destructive and open-world by default.
    assert_eq!(verdict(&policy, None, &prod, "t", None), "deny");
    assert_eq!(
        verdict(&policy, None, &prod, "t", Some(&additive())),
        "allow"
    );
    let closed = destructive().open_world(false);
    assert_eq!(verdict(&policy, None, &prod, "t", Some(&closed)), "allow");
}

#[test]
fn except_with_target_conditions_carves_out_tools() {
    let policy = policy(
        r#"
rules:
- name: prod-locked
  effect: deny
  match: {labels: env=prod}
  except: {tools: ["get_*", "list_*"], groups: [oncall]}
"#,
    );
    let prod = facts("prod-k8s", Some("kubernetes"), &[("env", "prod")]);
    let oncall = user("o", &["oncall"], None);
    let other = user("x", &["dev"], None);
    assert_eq!(
        verdict(&policy, Some(&oncall), &prod, "list_pods", None),
        "allow"
    );
    assert_eq!(
        verdict(&policy, Some(&oncall), &prod, "delete_pod", None),
        "deny"
    );
    assert_eq!(
        verdict(&policy, Some(&other), &prod, "list_pods", None),
        "deny"
    );
}

#[test]
fn no_rules_allow_everything_and_the_denial_names_the_rule() {
    let empty = Policy::compile(&[]);
    assert!(empty.is_empty());
    let prod = facts("prod-k8s", Some("kubernetes"), &[("env", "prod")]);
    assert_eq!(verdict(&empty, None, &prod, "t", None), "allow");

    let policy = policy(
        "rules: [{name: no-prod, effect: deny, match: {labels: env=prod}, message: \"Ask #sre.\"}]",
    );
    let class = policy.classify(&Who::default());
    let denied = policy.decide(
        &class,
        &Target {
            server: "prod-k8s",
            facts: &prod,
            tool: "delete_pod",
            annotations: None,
        },
    );
    let text = denied
        .denial("x_kubernetes_delete_pod", "instance \"prod\"")
        .unwrap();
    assert_eq!(
        text,
        "Denied by policy: rule \"no-prod\" of policy \"p\" denies x_kubernetes_delete_pod on instance \"prod\" for you. Ask #sre."
    );
    assert_eq!(Verdict::Allow.denial("t", "x"), None);
}

#[test]
fn callers_of_one_class_share_it() {
    let policy = policy(PROD_READ_ONLY_EXCEPT_SRE);
    let a = policy.classify(&Who::of(Some(&user("a", &["sre"], None))));
    let b = policy.classify(&Who::of(Some(&user("b", &["sre", "x"], None))));
    let c = policy.classify(&Who::of(Some(&user("c", &["dev"], None))));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

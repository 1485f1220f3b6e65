//! Tool policy: whether a caller may call a tool on a server or instance,
//! from the ToolPolicy rules in force. Pure: compiled once per change of
//! the policies, evaluated on every call and every listing.
//!
//! ## How rules combine
//! A rule applies to a call when its `match` holds and its `except` does
//! not. Of the rules that apply:
//! 1. any `deny` refuses the call (deny wins);
//! 2. else any `allow` permits it, lifting `readOnly` and `confirm`;
//! 3. else a `readOnly` refuses a tool not annotated `readOnlyHint: true`;
//! 4. else a `confirm` makes a destructive tool (not read-only, and
//!    `destructiveHint` not false) wait for the user's confirmation;
//! 5. a call no rule applies to is allowed (no policy: everything is).
//!
//! A caller's part of every rule (subjects, groups, clients, anonymous) is
//! evaluated once per caller into a [`CallerClass`]; two callers of one
//! class see the same lists, so listings are cached per class.

pub mod listing;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use rmcp::model::ToolAnnotations;
use wildmatch::WildMatch;

use crate::api::{AnnotationMatch, LabelSelector, PolicyEffect, PolicyMatch, UserIdentity};
use crate::catalog::ServerFacts;
use crate::source::DesiredPolicy;

/// The caller, as rules see it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Who<'a> {
    /// `None`: anonymous (auth is off).
    pub subject: Option<&'a str>,
    pub groups: &'a [String],
    pub client: Option<&'a str>,
}

impl<'a> Who<'a> {
    pub fn of(user: Option<&'a UserIdentity>) -> Self {
        match user {
            Some(user) => Self {
                subject: Some(&user.key.subject),
                groups: &user.groups,
                client: user.client.as_deref(),
            },
            None => Self::default(),
        }
    }
}

/// What a call is aimed at.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub server: &'a str,
    pub facts: &'a ServerFacts,
    /// The upstream's own name for the tool.
    pub tool: &'a str,
    pub annotations: Option<&'a ToolAnnotations>,
}

/// A rule as named in denials, the audit log and status.
#[derive(Debug, PartialEq, Eq)]
pub struct RuleName {
    /// `rule` of policy `policy` (`#<index>` when the rule has no name).
    pub rule: String,
    pub policy: String,
    /// Where the policy was declared (`policy.yaml#0`, `ToolPolicy ns/name`).
    pub origin: String,
    pub message: Option<String>,
}

impl std::fmt::Display for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rule {:?} of policy {:?}", self.rule, self.policy)
    }
}

/// The outcome for one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused by a `deny` rule, or by a `readOnly` rule (`read_only`) for
    /// a tool not annotated read-only.
    Deny {
        rule: Arc<RuleName>,
        read_only: bool,
    },
    /// Runs once the user confirms.
    Confirm {
        rule: Arc<RuleName>,
    },
}

impl Verdict {
    /// The text a denied caller (an agent) reads, naming the rule.
    pub fn denial(&self, tool: &str, place: &str) -> Option<String> {
        let Verdict::Deny { rule, read_only } = self else {
            return None;
        };
        let why = if *read_only {
            format!(
                "{rule} allows only tools annotated readOnlyHint on {place} for you, and {tool} is not"
            )
        } else {
            format!("{rule} denies {tool} on {place} for you")
        };
        Some(match &rule.message {
            Some(message) => format!("Denied by policy: {why}. {message}"),
            None => format!("Denied by policy: {why}."),
        })
    }
}

/// How a denial names where the call was aimed: the instance, else the server.
pub fn place(instance: Option<&str>, server: &str) -> String {
    match instance {
        Some(instance) => format!("instance {instance:?}"),
        None => format!("server {server:?}"),
    }
}

/// Which rules' caller conditions hold for one caller: bit `2i` for rule
/// i's `match`, bit `2i + 1` for its `except`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CallerClass(Vec<u64>);

impl CallerClass {
    fn set(&mut self, bit: usize) {
        let word = bit / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (bit % 64);
    }

    fn get(&self, bit: usize) -> bool {
        self.0
            .get(bit / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }
}

/// The rules in force, compiled.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    /// The policies compiled, for status: name, origin and rule count.
    pub sources: Vec<(String, String, usize)>,
}

#[derive(Debug)]
struct Rule {
    name: Arc<RuleName>,
    effect: PolicyEffect,
    matches: Conditions,
    except: Option<Conditions>,
}

#[derive(Debug)]
struct Conditions {
    subjects: Vec<WildMatch>,
    groups: Vec<WildMatch>,
    clients: Vec<WildMatch>,
    anonymous: Option<bool>,
    families: Vec<String>,
    servers: Vec<WildMatch>,
    instances: Vec<WildMatch>,
    labels: Option<LabelSelector>,
    tools: Vec<WildMatch>,
    annotations: AnnotationMatch,
}

fn patterns(values: &[String]) -> Vec<WildMatch> {
    values.iter().map(|v| WildMatch::new(v)).collect()
}

fn any(patterns: &[WildMatch], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
}

impl Conditions {
    /// `None` when the selector does not parse (validation refuses such a
    /// policy before it gets here).
    fn compile(matches: &PolicyMatch) -> Option<Self> {
        let labels = match &matches.labels {
            Some(text) => Some(LabelSelector::parse(text).ok()?),
            None => None,
        };
        Some(Self {
            subjects: patterns(&matches.subjects),
            groups: patterns(&matches.groups),
            clients: patterns(&matches.clients),
            anonymous: matches.anonymous,
            families: matches.families.clone(),
            servers: patterns(&matches.servers),
            instances: patterns(&matches.instances),
            labels,
            tools: patterns(&matches.tools),
            annotations: matches.annotations.clone().unwrap_or_default(),
        })
    }

    fn caller_holds(&self, who: &Who) -> bool {
        if let Some(anonymous) = self.anonymous
            && anonymous != who.subject.is_none()
        {
            return false;
        }
        any(&self.subjects, who.subject)
            && any(&self.clients, who.client)
            && (self.groups.is_empty()
                || who
                    .groups
                    .iter()
                    .any(|g| self.groups.iter().any(|p| p.matches(g))))
    }

    fn target_holds(&self, target: &Target) -> bool {
        let member = target.facts.family.as_ref();
        if !self.families.is_empty()
            && !member.is_some_and(|(family, _)| self.families.iter().any(|f| f == family))
        {
            return false;
        }
        if !any(&self.servers, Some(target.server)) || !any(&self.tools, Some(target.tool)) {
            return false;
        }
        if !self.instances.is_empty() {
            let named = member.is_some_and(|(_, instance)| {
                std::iter::once(&instance.instance)
                    .chain(&instance.aliases)
                    .any(|name| self.instances.iter().any(|p| p.matches(name)))
            });
            if !named {
                return false;
            }
        }
        if let Some(selector) = &self.labels
            && !selector.matches(&target.facts.labels)
        {
            return false;
        }
        annotations_hold(&self.annotations, target.annotations)
    }
}

/// MCP's defaults for absent hints: readOnly false, destructive true,
/// idempotent false, openWorld true.
fn hints(annotations: Option<&ToolAnnotations>) -> [bool; 4] {
    let a = annotations;
    [
        a.and_then(|a| a.read_only_hint).unwrap_or(false),
        a.and_then(|a| a.destructive_hint).unwrap_or(true),
        a.and_then(|a| a.idempotent_hint).unwrap_or(false),
        a.and_then(|a| a.open_world_hint).unwrap_or(true),
    ]
}

fn annotations_hold(wanted: &AnnotationMatch, annotations: Option<&ToolAnnotations>) -> bool {
    let wants = [
        wanted.read_only_hint,
        wanted.destructive_hint,
        wanted.idempotent_hint,
        wanted.open_world_hint,
    ];
    if wants.iter().all(Option::is_none) {
        return true;
    }
    let has = hints(annotations);
    wants
        .iter()
        .zip(has)
        .all(|(want, has)| want.is_none_or(|w| w == has))
}

/// Read-only by its annotations.
pub fn is_read_only(annotations: Option<&ToolAnnotations>) -> bool {
    hints(annotations)[0]
}

/// Destructive by its annotations: not read-only, and not marked
/// `destructiveHint: false`.
pub fn is_destructive(annotations: Option<&ToolAnnotations>) -> bool {
    let [read_only, destructive, _, _] = hints(annotations);
    !read_only && destructive
}

impl Policy {
    /// Compiles the policies in force (validated by their source).
    pub fn compile(policies: &[DesiredPolicy]) -> Self {
        let mut rules = Vec::new();
        let mut sources = Vec::new();
        for policy in policies {
            let before = rules.len();
            for (index, rule) in policy.spec.rules.iter().enumerate() {
                let name = Arc::new(RuleName {
                    rule: rule.name.clone().unwrap_or_else(|| format!("#{index}")),
                    policy: policy.name.clone(),
                    origin: policy.origin.clone(),
                    message: rule.message.clone(),
                });
                let compiled = Conditions::compile(&rule.matches).and_then(|matches| {
                    let except = match &rule.except {
                        Some(except) => Some(Conditions::compile(except)?),
                        None => None,
                    };
                    Some((matches, except))
                });
                let Some((matches, except)) = compiled else {
                    // Validation refuses these; a deny that cannot be
                    // read must not be lost silently.
                    tracing::error!(policy = %policy.name, rule = %name.rule, "policy rule has an invalid label selector; it is skipped");
                    continue;
                };
                rules.push(Rule {
                    name,
                    effect: rule.effect,
                    matches,
                    except,
                });
            }
            sources.push((
                policy.name.clone(),
                policy.origin.clone(),
                rules.len() - before,
            ));
        }
        Self { rules, sources }
    }

    /// No rules: every call is allowed, lists are not filtered.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The caller's class: which rules' caller conditions hold for `who`.
    pub fn classify(&self, who: &Who) -> CallerClass {
        let mut class = CallerClass::default();
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.matches.caller_holds(who) {
                class.set(2 * i);
            }
            if rule.except.as_ref().is_some_and(|e| e.caller_holds(who)) {
                class.set(2 * i + 1);
            }
        }
        class
    }

    /// The verdict for a call to `target` by a caller of `class`.
    pub fn decide(&self, class: &CallerClass, target: &Target) -> Verdict {
        let mut allowed = false;
        let mut read_only = None;
        let mut confirm = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if !class.get(2 * i) || !rule.matches.target_holds(target) {
                continue;
            }
            if let Some(except) = &rule.except
                && class.get(2 * i + 1)
                && except.target_holds(target)
            {
                continue;
            }
            match rule.effect {
                PolicyEffect::Deny => {
                    return Verdict::Deny {
                        rule: rule.name.clone(),
                        read_only: false,
                    };
                }
                PolicyEffect::Allow => allowed = true,
                PolicyEffect::ReadOnly => {
                    read_only.get_or_insert(&rule.name);
                }
                PolicyEffect::Confirm => {
                    confirm.get_or_insert(&rule.name);
                }
            }
        }
        if allowed {
            return Verdict::Allow;
        }
        if let Some(rule) = read_only
            && !is_read_only(target.annotations)
        {
            return Verdict::Deny {
                rule: rule.clone(),
                read_only: true,
            };
        }
        if let Some(rule) = confirm
            && is_destructive(target.annotations)
        {
            return Verdict::Confirm { rule: rule.clone() };
        }
        Verdict::Allow
    }
}

//! Building a [`Catalog`] from the servers' inventories: a pure function, so
//! naming and collision rules are tested without any session.
//!
//! Collision rule: a name already owned in the previous catalog stays with
//! its owner (adding a server never takes a working tool away from another);
//! among newcomers the server whose name sorts first wins. Every loser is
//! reported, nothing is overwritten silently.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rmcp::model::Tool;

use super::family::{Divergence, FamilyTool, Instance, MemberTool, fold_tool};
use super::naming::exposed_name;
use super::{Catalog, Collision, FamilySummary, Route, ServerFacts};
use crate::fleet::Inventory;

/// One server's contribution to the catalog.
pub struct Member {
    pub server: Arc<str>,
    pub tool_prefix: Option<String>,
    /// The server's labels (`metadata.labels`).
    pub labels: BTreeMap<String, String>,
    pub family: Option<Membership>,
    pub inventory: Arc<Inventory>,
}

/// Claims exposed names, resolving collisions by incumbency then server order.
struct Claims<'a> {
    kind: &'static str,
    previous: &'a dyn Fn(&str) -> Option<Arc<str>>,
    owners: HashMap<String, Arc<str>>,
    collisions: Vec<Collision>,
}

impl Claims<'_> {
    /// Returns true when `server` owns `exposed` (possibly displacing a newcomer).
    fn claim(&mut self, exposed: &str, server: &Arc<str>) -> Result<Option<Arc<str>>, ()> {
        let Some(current) = self.owners.get(exposed).cloned() else {
            self.owners.insert(exposed.to_string(), server.clone());
            return Ok(None);
        };
        if current == *server {
            return Err(()); // duplicate within one server: keep the first
        }
        let incumbent = (self.previous)(exposed);
        let challenger_wins = incumbent.as_ref() == Some(server);
        let (owner, loser) = if challenger_wins {
            (server.clone(), current.clone())
        } else {
            (current.clone(), server.clone())
        };
        self.collisions.push(Collision {
            exposed: exposed.to_string(),
            kind: self.kind,
            owner: owner.to_string(),
            loser: loser.to_string(),
        });
        if challenger_wins {
            self.owners.insert(exposed.to_string(), server.clone());
            Ok(Some(current))
        } else {
            Err(())
        }
    }
}

/// A family member's identity, as declared in `spec.family`.
pub struct Membership {
    pub family: String,
    pub instance_arg: String,
    pub instance: Instance,
}

/// Owner id of a folded tool in collision bookkeeping (`:` never occurs in server names).
fn family_owner(family: &str) -> Arc<str> {
    format!("family:{family}").into()
}

enum ToolEntry {
    Direct(Tool, Route, Option<Extras>),
    Family(Tool, Arc<FamilyTool>, Option<Extras>),
}

/// Members of a tool's listing beyond rmcp's model (see `fleet::listing`).
type Extras = Arc<serde_json::Map<String, serde_json::Value>>;

/// Members rmcp's `Tool` writes itself; a folded tool builds these anew.
const MODELLED: &[&str] = &[
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
    "icons",
    "_meta",
];

/// What a folded tool keeps of its copies' extras: the members rmcp's model
/// has no place for (`execution`, ...) on which every copy agrees.
fn shared_extras(copies: &[Option<&Extras>]) -> Option<Extras> {
    let (first, rest) = copies.split_first()?;
    let shared: serde_json::Map<_, _> = first
        .as_ref()?
        .iter()
        .filter(|(key, _)| !MODELLED.contains(&key.as_str()))
        .filter(|(key, value)| {
            rest.iter()
                .all(|other| other.and_then(|o| o.get(key.as_str())) == Some(*value))
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    (!shared.is_empty()).then(|| Arc::new(shared))
}

pub fn build(members: &[Member], previous: &Catalog) -> Catalog {
    let mut members: Vec<&Member> = members.iter().collect();
    members.sort_by(|a, b| a.server.cmp(&b.server));

    let prev_tool = |n: &str| {
        previous
            .tool_routes
            .get(n)
            .map(|r| r.server.clone())
            .or_else(|| {
                previous
                    .family_routes
                    .get(n)
                    .map(|f| family_owner(&f.family))
            })
    };
    let prev_prompt = |n: &str| previous.prompt_routes.get(n).map(|r| r.server.clone());
    let prev_resource = |n: &str| previous.resource_routes.get(n).cloned();

    let mut tools: HashMap<String, ToolEntry> = HashMap::new();
    let mut tool_claims = Claims {
        kind: "tool",
        previous: &prev_tool,
        owners: HashMap::new(),
        collisions: vec![],
    };
    let mut prompts = HashMap::new();
    let mut prompt_claims = Claims {
        kind: "prompt",
        previous: &prev_prompt,
        owners: HashMap::new(),
        collisions: vec![],
    };
    let mut resources = HashMap::new();
    let mut resource_claims = Claims {
        kind: "resource",
        previous: &prev_resource,
        owners: HashMap::new(),
        collisions: vec![],
    };
    let mut templates = Vec::new();
    let mut template_routes = Vec::new();
    let mut divergences = Vec::new();
    let mut families: BTreeMap<String, FamilySummary> = BTreeMap::new();

    // Folded family tools claim their names first: they stand for many servers.
    let mut by_family: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    for member in &members {
        if let Some(membership) = &member.family {
            by_family
                .entry(membership.family.as_str())
                .or_default()
                .push(member);
        }
    }
    let mut unfolded: Vec<(Arc<str>, &Tool)> = Vec::new();
    for (family, group) in &by_family {
        let instance_arg = group
            .iter()
            .filter_map(|m| m.family.as_ref())
            .map(|f| f.instance_arg.as_str())
            .next()
            .unwrap_or(super::family::DEFAULT_INSTANCE_ARG)
            .to_string();
        let summary = families
            .entry(family.to_string())
            .or_insert_with(|| FamilySummary {
                instance_arg: instance_arg.clone(),
                members: vec![],
            });
        let mut names: BTreeMap<&str, Vec<MemberTool>> = BTreeMap::new();
        let mut copy_extras: BTreeMap<&str, Vec<Option<&Extras>>> = BTreeMap::new();
        for member in group {
            let Some(membership) = &member.family else {
                continue;
            };
            summary.members.push(membership.instance.clone());
            if membership.instance_arg != instance_arg {
                divergences.push(Divergence {
                    family: family.to_string(),
                    tool: String::new(),
                    server: member.server.to_string(),
                    reason: format!(
                        "family.instanceArg {:?} differs from the family's {:?}; the family's is used",
                        membership.instance_arg, instance_arg
                    ),
                });
            }
            for tool in &member.inventory.tools {
                copy_extras
                    .entry(tool.name.as_ref())
                    .or_default()
                    .push(member.inventory.tool_extras.get(tool.name.as_ref()));
                names
                    .entry(tool.name.as_ref())
                    .or_default()
                    .push(MemberTool {
                        instance: &membership.instance,
                        tool,
                    });
            }
        }
        for (name, copies) in names {
            let exposed = format!("x_{family}_{name}");
            let result = fold_tool(family, &instance_arg, exposed.clone(), &copies);
            for (server, divergence) in result.unfolded {
                if let Some(copy) = copies.iter().find(|c| c.instance.server == server) {
                    unfolded.push((server.clone(), copy.tool));
                }
                divergences.push(divergence);
            }
            if let Some((tool, route)) = result.folded
                && tool_claims.claim(&exposed, &family_owner(family)).is_ok()
            {
                let extras = copy_extras.get(name).and_then(|c| shared_extras(c));
                tools.insert(exposed, ToolEntry::Family(tool, Arc::new(route), extras));
            }
        }
    }

    for member in &members {
        let prefix = member.tool_prefix.as_deref();
        let own_tools: Vec<&Tool> = if member.family.is_some() {
            // Only the copies that could not be folded appear under the server's name.
            unfolded
                .iter()
                .filter(|(s, _)| *s == member.server)
                .map(|(_, t)| *t)
                .collect()
        } else {
            member.inventory.tools.iter().collect()
        };
        for tool in own_tools {
            let exposed = exposed_name(prefix, &member.server, &tool.name);
            if tool_claims.claim(&exposed, &member.server).is_ok() {
                let mut shown = tool.clone();
                shown.name = exposed.clone().into();
                let route = Route {
                    server: member.server.clone(),
                    name: tool.name.to_string(),
                };
                let extras = member
                    .inventory
                    .tool_extras
                    .get(tool.name.as_ref())
                    .cloned();
                tools.insert(exposed, ToolEntry::Direct(shown, route, extras));
            }
        }
        for prompt in &member.inventory.prompts {
            let exposed = exposed_name(prefix, &member.server, &prompt.name);
            if prompt_claims.claim(&exposed, &member.server).is_ok() {
                let mut shown = prompt.clone();
                shown.name = exposed.clone();
                prompts.insert(
                    exposed,
                    (
                        shown,
                        Route {
                            server: member.server.clone(),
                            name: prompt.name.clone(),
                        },
                    ),
                );
            }
        }
        for resource in &member.inventory.resources {
            if resource_claims.claim(&resource.uri, &member.server).is_ok() {
                resources.insert(
                    resource.uri.clone(),
                    (resource.clone(), member.server.clone()),
                );
            }
        }
        for template in &member.inventory.resource_templates {
            let literal = template
                .uri_template
                .split('{')
                .next()
                .unwrap_or("")
                .to_string();
            template_routes.push((literal, member.server.clone()));
            templates.push(template.clone());
        }
    }

    let mut tool_list: Vec<(String, ToolEntry)> = tools.into_iter().collect();
    tool_list.sort_by(|a, b| a.0.cmp(&b.0));
    let mut prompt_list: Vec<_> = prompts.into_iter().collect();
    prompt_list.sort_by(|a, b| a.0.cmp(&b.0));
    let mut resource_list: Vec<_> = resources.into_iter().collect();
    resource_list.sort_by(|a, b| a.0.cmp(&b.0));
    templates.sort_by(|a, b| a.uri_template.cmp(&b.uri_template));
    template_routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));

    let mut tool_counts: BTreeMap<String, u32> =
        members.iter().map(|m| (m.server.to_string(), 0)).collect();
    let mut tool_routes = HashMap::new();
    let mut family_routes = HashMap::new();
    let mut exposed_tools = Vec::with_capacity(tool_list.len());
    let mut tool_extras = HashMap::new();
    for (name, entry) in tool_list {
        let (ToolEntry::Direct(_, _, extras) | ToolEntry::Family(_, _, extras)) = &entry;
        if let Some(extras) = extras {
            tool_extras.insert(name.clone(), extras.clone());
        }
        match entry {
            ToolEntry::Direct(tool, route, _) => {
                *tool_counts.entry(route.server.to_string()).or_default() += 1;
                tool_routes.insert(name, route);
                exposed_tools.push(tool);
            }
            ToolEntry::Family(tool, route, _) => {
                for member in &route.members {
                    *tool_counts.entry(member.server.to_string()).or_default() += 1;
                }
                family_routes.insert(name, route);
                exposed_tools.push(tool);
            }
        }
    }
    let mut collisions = tool_claims.collisions;
    collisions.extend(prompt_claims.collisions);
    collisions.extend(resource_claims.collisions);

    let servers = members
        .iter()
        .map(|m| {
            let facts = ServerFacts {
                labels: m.labels.clone(),
                family: m
                    .family
                    .as_ref()
                    .map(|f| (f.family.clone(), f.instance.clone())),
                task_extension: m.inventory.task_extension,
            };
            (m.server.clone(), Arc::new(facts))
        })
        .collect();
    Catalog {
        tools: Arc::new(exposed_tools),
        servers,
        tool_extras,
        tool_routes,
        family_routes,
        families,
        divergences,
        prompt_routes: prompt_list
            .iter()
            .map(|(n, (_, r))| (n.clone(), r.clone()))
            .collect(),
        prompts: Arc::new(prompt_list.into_iter().map(|(_, (p, _))| p).collect()),
        resource_routes: resource_list
            .iter()
            .map(|(u, (_, s))| (u.clone(), s.clone()))
            .collect(),
        resources: Arc::new(resource_list.into_iter().map(|(_, (r, _))| r).collect()),
        resource_templates: Arc::new(templates),
        template_routes,
        collisions,
        tool_counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{JsonObject, Tool};

    fn tool(name: &str, description: &str) -> Tool {
        let mut schema = JsonObject::new();
        schema.insert("type".into(), "object".into());
        Tool::new(name.to_string(), description.to_string(), Arc::new(schema))
    }

    fn member(server: &str, prefix: Option<&str>, tools: &[&str]) -> Member {
        Member {
            server: server.into(),
            tool_prefix: prefix.map(str::to_string),
            labels: Default::default(),
            family: None,
            inventory: Arc::new(Inventory {
                tools: tools
                    .iter()
                    .map(|t| tool(t, &format!("{t} on {server}")))
                    .collect(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn tools_are_prefixed_sorted_and_routed_to_their_server() {
        let catalog = build(
            &[
                member("b", None, &["z", "a"]),
                member("a", Some("k"), &["m"]),
            ],
            &Catalog::default(),
        );
        let names: Vec<_> = catalog.tools.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, ["x_b_a", "x_b_z", "x_k_m"]);
        assert_eq!(
            catalog.tool("x_k_m").map(|r| (&*r.server, r.name.as_str())),
            Some(("a", "m"))
        );
        assert_eq!(catalog.tools[0].description.as_deref(), Some("a on b"));
    }

    #[test]
    fn a_collision_keeps_the_incumbent_and_reports_the_newcomer() {
        let first = build(&[member("zeta", Some(""), &["echo"])], &Catalog::default());
        let both = [
            member("alpha", Some(""), &["echo", "own"]),
            member("zeta", Some(""), &["echo"]),
        ];
        let after = build(&both, &first);
        assert_eq!(
            &*after.tool("echo").unwrap().server,
            "zeta",
            "incumbent keeps the name"
        );
        assert_eq!(after.collisions.len(), 1);
        assert_eq!(after.collisions[0].loser, "alpha");
        assert!(
            after.tool("own").is_some(),
            "the newcomer's other tools stay"
        );
        // From scratch, the server that sorts first wins.
        let fresh = build(&both, &Catalog::default());
        assert_eq!(&*fresh.tool("echo").unwrap().server, "alpha");
        assert_eq!(fresh.tool_counts["zeta"], 0);
    }

    fn with_extras(mut member: Member, extras: &[(&str, serde_json::Value)]) -> Member {
        let inventory = Arc::get_mut(&mut member.inventory).expect("fresh inventory");
        for tool in &inventory.tools {
            let mut map = serde_json::Map::new();
            for (key, value) in extras {
                map.insert(key.to_string(), value.clone());
            }
            inventory
                .tool_extras
                .insert(tool.name.to_string(), Arc::new(map));
        }
        member
    }

    fn in_family(mut member: Member, instance: &str) -> Member {
        member.family = Some(Membership {
            family: "k8s".into(),
            instance_arg: "cluster".into(),
            instance: Instance {
                server: member.server.clone(),
                instance: instance.into(),
                aliases: vec![],
                labels: Default::default(),
            },
        });
        member
    }

    #[test]
    fn listed_members_beyond_the_model_follow_each_tool_and_folded_tools_keep_the_agreed_ones() {
        let task = serde_json::json!({"taskSupport": "optional"});
        let direct = with_extras(
            member("solo", None, &["run"]),
            &[("execution", task.clone())],
        );
        let a = with_extras(
            in_family(member("a", None, &["pods"]), "a"),
            &[
                ("execution", task.clone()),
                ("x-only-a", 1.into()),
                ("description", "A".into()),
            ],
        );
        let b = with_extras(
            in_family(member("b", None, &["pods"]), "b"),
            &[("execution", task.clone())],
        );
        let catalog = build(&[direct, a, b], &Catalog::default());
        assert_eq!(catalog.tool_extras["x_solo_run"]["execution"], task);
        assert!(catalog.supports_tasks("x_solo_run"));
        // Folded: what every copy agrees on and the model does not build anew.
        let folded = &catalog.tool_extras["x_k8s_pods"];
        assert_eq!(folded.keys().collect::<Vec<_>>(), ["execution"]);
        assert!(catalog.supports_tasks("x_k8s_pods"));
        assert!(!catalog.same_tools(&build(
            &[member("solo", None, &["run"])],
            &Catalog::default()
        )));
    }
}

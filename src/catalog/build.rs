//! Building a [`Catalog`] from the servers' inventories: a pure function, so
//! naming and collision rules are tested without any session.
//!
//! Collision rule: a name already owned in the previous catalog stays with
//! its owner (adding a server never takes a working tool away from another);
//! among newcomers the server whose name sorts first wins. Every loser is
//! reported, nothing is overwritten silently.

use std::collections::HashMap;
use std::sync::Arc;

use super::naming::exposed_name;
use super::{Catalog, Collision, Route};
use crate::fleet::Inventory;

/// One server's contribution to the catalog.
pub struct Member {
    pub server: Arc<str>,
    pub tool_prefix: Option<String>,
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

pub fn build(members: &[Member], previous: &Catalog) -> Catalog {
    let mut members: Vec<&Member> = members.iter().collect();
    members.sort_by(|a, b| a.server.cmp(&b.server));

    let prev_tool = |n: &str| previous.tool_routes.get(n).map(|r| r.server.clone());
    let prev_prompt = |n: &str| previous.prompt_routes.get(n).map(|r| r.server.clone());
    let prev_resource = |n: &str| previous.resource_routes.get(n).cloned();

    let mut tools = HashMap::new();
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

    for member in &members {
        let prefix = member.tool_prefix.as_deref();
        for tool in &member.inventory.tools {
            let exposed = exposed_name(prefix, &member.server, &tool.name);
            if tool_claims.claim(&exposed, &member.server).is_ok() {
                let mut shown = tool.clone();
                shown.name = exposed.clone().into();
                tools.insert(
                    exposed,
                    (
                        shown,
                        Route {
                            server: member.server.clone(),
                            name: tool.name.to_string(),
                        },
                    ),
                );
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

    let mut tool_list: Vec<_> = tools.into_iter().collect();
    tool_list.sort_by(|a, b| a.0.cmp(&b.0));
    let mut prompt_list: Vec<_> = prompts.into_iter().collect();
    prompt_list.sort_by(|a, b| a.0.cmp(&b.0));
    let mut resource_list: Vec<_> = resources.into_iter().collect();
    resource_list.sort_by(|a, b| a.0.cmp(&b.0));
    templates.sort_by(|a, b| a.uri_template.cmp(&b.uri_template));
    template_routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));

    let mut tool_counts = std::collections::BTreeMap::new();
    for member in &members {
        tool_counts.insert(member.server.to_string(), 0u32);
    }
    for (_, (_, route)) in &tool_list {
        *tool_counts.entry(route.server.to_string()).or_default() += 1;
    }
    let mut collisions = tool_claims.collisions;
    collisions.extend(prompt_claims.collisions);
    collisions.extend(resource_claims.collisions);

    Catalog {
        tool_routes: tool_list
            .iter()
            .map(|(n, (_, r))| (n.clone(), r.clone()))
            .collect(),
        tools: Arc::new(tool_list.into_iter().map(|(_, (t, _))| t).collect()),
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
}

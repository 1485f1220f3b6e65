//! Exposed names: the pure encode rule from (prefix, upstream name) to the
//! name clients see. Routing never parses names back: the catalog keeps an
//! explicit route per exposed name, so prefixes may contain `_`.

/// The name clients see for an upstream tool or prompt.
///
/// `tool_prefix` is `spec.toolPrefix`: unset means the server's name, and
/// `""` exposes the upstream name unchanged.
pub fn exposed_name(tool_prefix: Option<&str>, server: &str, name: &str) -> String {
    match tool_prefix {
        Some("") => name.to_string(),
        Some(prefix) => format!("x_{prefix}_{name}"),
        None => format!("x_{server}_{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::exposed_name;

    #[test]
    fn prefix_defaults_to_server_name_and_empty_prefix_keeps_names() {
        assert_eq!(
            exposed_name(None, "cluster-a", "list_pods"),
            "x_cluster-a_list_pods"
        );
        assert_eq!(
            exposed_name(Some("k8s"), "cluster-a", "list_pods"),
            "x_k8s_list_pods"
        );
        assert_eq!(
            exposed_name(Some(""), "cluster-a", "list_pods"),
            "list_pods"
        );
    }
}

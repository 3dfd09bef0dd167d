//! Client-facing names: per-backend filters and renames, then the conflict mode.

use crate::config::{AggregationConfig, ConflictMode, ItemFilter};

/// Whether `name` matches `pattern`: exact, or a prefix when the pattern ends with `*`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether the filter exposes `name`: deny wins, an empty allow list allows all.
pub fn allowed(filter: &ItemFilter, name: &str) -> bool {
    if filter.deny.iter().any(|p| matches(p, name)) {
        return false;
    }
    filter.allow.is_empty() || filter.allow.iter().any(|p| matches(p, name))
}

/// The client-facing name of backend item `name`, or `None` if filtered out.
pub fn client_name(config: &AggregationConfig, backend: &str, filter: &ItemFilter, name: &str) -> Option<String> {
    if !allowed(filter, name) {
        return None;
    }
    let renamed = filter.rename.get(name).map_or(name, String::as_str);
    Some(match config.conflict {
        ConflictMode::Prefix => format!("{backend}{}{renamed}", config.separator),
        ConflictMode::Priority | ConflictMode::Manual => renamed.to_owned(),
    })
}

/// Orders backend names: those named in `priority` first (in that order), then the rest as given.
pub fn priority_order<'a>(config: &AggregationConfig, backends: &[&'a str]) -> Vec<&'a str> {
    let mut ordered: Vec<&'a str> = config
        .priority
        .iter()
        .filter_map(|p| backends.iter().copied().find(|b| *b == p.as_str()))
        .collect();
    ordered.extend(
        backends
            .iter()
            .copied()
            .filter(|b| !config.priority.iter().any(|p| p == b)),
    );
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(conflict: ConflictMode) -> AggregationConfig {
        AggregationConfig {
            conflict,
            ..AggregationConfig::default()
        }
    }

    #[test]
    fn prefix_mode_prefixes_after_rename() {
        let mut f = ItemFilter::default();
        f.rename.insert("echo".into(), "say".into());
        assert_eq!(
            client_name(&agg(ConflictMode::Prefix), "alpha", &f, "echo").as_deref(),
            Some("alpha_say")
        );
        assert_eq!(
            client_name(&agg(ConflictMode::Priority), "alpha", &f, "echo").as_deref(),
            Some("say")
        );
    }

    #[test]
    fn deny_wins_over_allow_and_globs_work() {
        let f = ItemFilter {
            allow: vec!["get_*".into()],
            deny: vec!["get_secret".into()],
            ..Default::default()
        };
        assert!(allowed(&f, "get_user"));
        assert!(!allowed(&f, "get_secret"));
        assert!(!allowed(&f, "delete_user"));
        assert!(allowed(&ItemFilter::default(), "anything"));
    }

    #[test]
    fn priority_list_comes_first() {
        let config = AggregationConfig {
            priority: vec!["c".into(), "a".into()],
            ..Default::default()
        };
        assert_eq!(priority_order(&config, &["a", "b", "c"]), vec!["c", "a", "b"]);
    }
}

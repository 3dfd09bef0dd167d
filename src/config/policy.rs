//! `policy`: what callers may do (Cedar policies over tools, prompts, resources).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A file of Cedar policies (`.cedar`); unset (the default): every
    /// caller may do everything, as before policies existed.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes (it is also reloaded on
    /// SIGHUP); an invalid new version is refused and the old one stays.
    #[serde(with = "duration")]
    pub reload_interval: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            file: None,
            reload_interval: Duration::from_secs(2),
        }
    }
}

//! `admin`: who may call the admin API on `admin_listen`.

use serde::Deserialize;

/// The admin API's credential; with neither key set the API is off.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// A static bearer token (use `${VMCP_ADMIN_TOKEN}`), compared in constant time.
    pub token: Option<String>,
    /// A scope that makes an access token valid under `auth.inbound` an
    /// admin credential too (e.g. `vmcp:admin`).
    pub scope: Option<String>,
}

impl AdminConfig {
    /// Whether any credential is configured.
    pub fn is_on(&self) -> bool {
        self.token.as_deref().is_some_and(|t| !t.is_empty()) || self.scope.is_some()
    }
}

/// Never prints the token.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("scope", &self.scope)
            .finish()
    }
}

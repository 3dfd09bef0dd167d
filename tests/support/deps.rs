//! Third-party peers installed by `scripts/test.sh` under `target/test-deps`.

use std::path::PathBuf;

fn deps_dir() -> PathBuf {
    std::env::var_os("VMCP_TEST_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-deps"))
}

fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh (it installs the test peers)",
        path.display()
    );
    path
}

/// `@modelcontextprotocol/server-everything`'s entry point.
pub fn server_everything() -> PathBuf {
    require(deps_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js"))
}

/// The Python interpreter of the venv that has the `mcp` SDK.
pub fn python() -> PathBuf {
    require(deps_dir().join("venv/bin/python"))
}

/// Where the conformance suite, its Node 22 and the fixture are installed.
pub fn conformance_dir() -> PathBuf {
    require(deps_dir().join("conformance/node_modules/.bin/node"));
    deps_dir().join("conformance")
}

/// Node 22 (npm's `node` package, installed with the conformance suite): the
/// OpenID provider needs it (`oidc-provider` 9 wants Node 22 LTS or later; Debian
/// 12's `nodejs` is 18, which lacks APIs it calls).
pub fn node22() -> PathBuf {
    require(deps_dir().join("conformance/node_modules/.bin/node"))
}

/// The folder whose `node_modules` holds `oidc-provider` (given to
/// `tests/support/oidc/provider.mjs` as `NODE_DEPS`).
pub fn oidc_provider_deps() -> PathBuf {
    require(deps_dir().join("node_modules/oidc-provider/package.json"));
    deps_dir()
}

/// A TCP port that was free a moment ago (for peers that take a port number).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

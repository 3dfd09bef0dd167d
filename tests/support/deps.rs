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
///
/// Taken below the kernel's ephemeral range when there is room: a port the
/// kernel handed out for `:0` is also what it hands to outgoing connections,
/// so on a busy machine one of the suite's own connections could take it
/// before the peer binds it (a Redis node or sentinel that then never starts).
/// Each test process walks its own stretch of the range, checking each port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        .unwrap_or(32768);
    const FIRST: u32 = 10_000;
    if low > FIRST + 1_000 {
        let span = low - FIRST;
        let start = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

//! Backends reached through a real forward proxy (tinyproxy, with basic
//! auth) named by `HTTP_PROXY`, hosts in `NO_PROXY` reached directly, and
//! the proxy's password kept out of vmcp's log and the clients' view.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::client::Client;
use support::deps::free_port;
use support::process::VmcpProcess;
use support::TestBackend;

const PASSWORD: &str = "pr0xy-s3cret";

struct Tinyproxy {
    port: u16,
    log: PathBuf,
    _child: tokio::process::Child,
}

impl Tinyproxy {
    async fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("vmcp-tinyproxy-{port}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 50\nBasicAuth vmcp {PASSWORD}\n",
                log.display()
            ),
        )
        .expect("conf");
        let child = tokio::process::Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tinyproxy runs (scripts/test.sh installs it)");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Self {
                    port,
                    log,
                    _child: child,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("tinyproxy did not listen on {port}");
    }

    fn url(&self, password: &str) -> String {
        format!("http://vmcp:{password}@127.0.0.1:{}", self.port)
    }

    /// Whether the proxy was asked for a tunnel to `addr`.
    fn tunnelled_to(&self, addr: &str) -> bool {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .contains(&format!("CONNECT {addr} HTTP/1.1"))
    }
}

/// Two backends: `far` (127.0.0.1, through the proxy) and `near`
/// (`localhost`, in `NO_PROXY`), and vmcp with its log in a file.
async fn setup(password: &str) -> (Tinyproxy, TestBackend, TestBackend, VmcpProcess, PathBuf) {
    let proxy = Tinyproxy::start().await;
    let (far, near) = (TestBackend::start("far").await, TestBackend::start("near").await);
    let near_url = near.url.replace("127.0.0.1", "localhost");
    let config = format!(
        "backends:\n  - name: far\n    url: {}\n  - name: near\n    url: {near_url}\nsession:\n  init_timeout: 5s\n",
        far.url
    );
    let log = std::env::temp_dir().join(format!("vmcp-egress-{}.log", proxy.port));
    let proxy_url = proxy.url(password);
    let env = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("NO_PROXY", "localhost"),
        ("RUST_LOG", "debug"),
    ];
    let vmcp = VmcpProcess::start_logged(free_port(), &config, &env, &log).await;
    (proxy, far, near, vmcp, log)
}

#[tokio::test]
async fn backends_beyond_no_proxy_are_reached_through_the_proxy() {
    let (proxy, far, near, vmcp, log) = setup(PASSWORD).await;
    let mut c = Client::new(&vmcp.url);
    c.initialize().await;
    assert_eq!(c.call_tool("far_echo", json!({"message": "x"})).await.text(), "far:x");
    assert_eq!(c.call_tool("near_echo", json!({"message": "y"})).await.text(), "near:y");
    assert!(proxy.tunnelled_to(&far.addr), "the far backend was reached directly");
    assert!(
        !proxy.tunnelled_to(&near.addr),
        "a NO_PROXY host went through the proxy"
    );
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(!logs.contains(PASSWORD), "the proxy's password reached the log");
}

#[tokio::test]
async fn a_proxy_refusing_vmcp_leaves_the_backend_out_and_says_why() {
    let (proxy, _far, _near, vmcp, log) = setup("wrong-password").await;
    let mut c = Client::new(&vmcp.url);
    let init = c.initialize().await;
    let instructions = init.instructions();
    assert!(
        instructions.contains("far (") && instructions.contains("proxy"),
        "{instructions}"
    );
    assert!(!instructions.contains("wrong-password"), "{instructions}");
    assert_eq!(c.call_tool("near_echo", json!({"message": "y"})).await.text(), "near:y");
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(!logs.contains("wrong-password"), "the proxy's password reached the log");
    drop(proxy);
}

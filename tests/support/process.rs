//! vmcp as a separate process (the real binary), so a test can SIGKILL it.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct VmcpProcess {
    pub url: String,
    child: Child,
    _config: tempfile_path::TempPath,
}

mod tempfile_path {
    /// A file removed when dropped.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl VmcpProcess {
    /// Starts `vmcp serve` on a free port; `yaml` must not set `listen`.
    pub async fn start(yaml: &str) -> Self {
        let port = super::deps::free_port();
        let path = std::env::temp_dir().join(format!("vmcp-test-{port}.yaml"));
        std::fs::write(&path, format!("listen: 127.0.0.1:{port}\n{yaml}")).expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_vmcp"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("vmcp binary runs");
        let base = format!("http://127.0.0.1:{port}");
        let http = super::http();
        for _ in 0..400 {
            if http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Self {
                    url: format!("{base}/mcp"),
                    child,
                    _config: tempfile_path::TempPath(path),
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("vmcp did not come up on {port}");
    }

    /// SIGKILL: no graceful shutdown, nothing flushed.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

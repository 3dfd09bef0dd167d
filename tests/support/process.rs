//! vmcp as a separate process (the real binary), so a test can SIGKILL it.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct VmcpProcess {
    pub url: String,
    pub port: u16,
    child: Child,
    _config: tempfile_path::TempPath,
}

/// Whether vmcp runs at its own default log level (see [`log_as_shipped`]).
static AS_SHIPPED: AtomicBool = AtomicBool::new(false);

/// From now on, vmcp processes log as they do when installed: at vmcp's
/// default level (`RUST_LOG` unset), into a file beside their config
/// (`vmcp-test-<port>.log` in the temporary directory) rather than the
/// terminal. The load benchmark measures them so: a quieter level than a
/// user gets would flatter what a call costs. Tests keep `warn`.
#[allow(dead_code)]
pub fn log_as_shipped() {
    AS_SHIPPED.store(true, Ordering::Relaxed);
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
        Self::start_on(super::deps::free_port(), yaml).await
    }

    /// Starts `vmcp serve` on `port`; `yaml` must not set `listen`.
    pub async fn start_on(port: u16, yaml: &str) -> Self {
        Self::start_full(port, yaml, &[], None).await
    }

    /// Starts `vmcp serve` with extra environment variables (`RUST_LOG` among them overrides `warn`).
    pub async fn start_env(yaml: &str, env: &[(&str, &str)]) -> Self {
        Self::start_full(super::deps::free_port(), yaml, env, None).await
    }

    /// Like [`VmcpProcess::start_env`] on `port`, with vmcp's stderr (its log) written to `log`.
    pub async fn start_logged(port: u16, yaml: &str, env: &[(&str, &str)], log: &std::path::Path) -> Self {
        Self::start_full(port, yaml, env, Some(log)).await
    }

    /// `log`: where vmcp's stderr goes; without one, the terminal, or under
    /// [`log_as_shipped`] a file of its own.
    async fn start_full(port: u16, yaml: &str, env: &[(&str, &str)], log: Option<&std::path::Path>) -> Self {
        let path = std::env::temp_dir().join(format!("vmcp-test-{port}.yaml"));
        std::fs::write(&path, format!("listen: 127.0.0.1:{port}\n{yaml}")).expect("write config");
        // `VMCP_BIN` runs another build (an A/B comparison in the benchmark).
        let bin = std::env::var_os("VMCP_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_vmcp").into());
        let mut command = Command::new(bin);
        command.args(["serve", "--config"]).arg(&path);
        let shipped = AS_SHIPPED.load(Ordering::Relaxed);
        if shipped {
            command.env_remove("RUST_LOG");
        } else {
            command.env("RUST_LOG", "warn");
        }
        let own_log = shipped.then(|| std::env::temp_dir().join(format!("vmcp-test-{port}.log")));
        let stderr = match log.or(own_log.as_deref()) {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create log file")),
            None => Stdio::inherit(),
        };
        let child = command
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
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
                    port,
                    child,
                    _config: tempfile_path::TempPath(path),
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("vmcp did not come up on {port}");
    }

    /// Rewrites the config file (`yaml`, without `listen`) and sends SIGHUP,
    /// as an operator does to change a static member list.
    pub fn reconfigure(&self, yaml: &str) {
        std::fs::write(&self._config.0, format!("listen: 127.0.0.1:{}\n{yaml}", self.port)).expect("write config");
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL: no graceful shutdown, nothing flushed.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM (as Kubernetes stops a pod); returns once the process exited.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
        self.child.wait().await.expect("vmcp exits")
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// Waits for the process to exit.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().await.expect("vmcp exits")
    }

    /// The value of a Prometheus sample line starting with `prefix` (0 if absent).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let base = self.url.trim_end_matches("/mcp");
        let text = super::http()
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

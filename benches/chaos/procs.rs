//! The real processes of the chaos run: `redis-server` and the release-built
//! `vmcp` replicas, each started, signalled, awaited and restarted on the
//! same port, with stderr appended to `target/chaos-logs/{name}.log` and CPU
//! time read from `/proc` before each incarnation is reaped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::cpu::cpu_secs;

fn is_zombie_or_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// A free TCP port on 127.0.0.1 (free a moment ago).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One restartable child process: a name, a command line, a log file.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// CPU seconds of the incarnations already reaped.
    cpu_done: f64,
}

impl Proc {
    pub fn new(name: &str, program: &Path, args: Vec<String>, env: Vec<(String, String)>, logs: &Path) -> Self {
        Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            env,
            log: logs.join(format!("{name}.log")),
            child: None,
            cpu_done: 0.0,
        }
    }

    /// Spawns it (not waiting for readiness); stderr and stdout go to its log.
    pub fn spawn(&mut self, note: &str) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        writeln!(file, "===== chaos: {note} =====")?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends `signal` (`TERM`, `KILL`) and waits up to `bound` for the exit;
    /// returns how long it took, or `None` if it had to be SIGKILLed.
    pub async fn stop(&mut self, signal: &str, bound: Duration) -> Option<Duration> {
        let pid = self.pid()?;
        let began = Instant::now();
        let _ = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status();
        let mut exited = true;
        while !is_zombie_or_gone(pid) {
            if began.elapsed() > bound {
                exited = false;
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = began.elapsed();
        // Read the zombie's CPU time before reaping it.
        self.cpu_done += cpu_secs(pid).unwrap_or(0.0);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait().await;
        }
        exited.then_some(took)
    }

    /// CPU seconds over all incarnations so far.
    pub fn cpu_total(&self) -> f64 {
        self.cpu_done + self.pid().and_then(cpu_secs).unwrap_or(0.0)
    }

    /// Appends a line to its log (to mark faults in the timeline).
    pub fn mark(&self, note: &str) {
        if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(file, "===== chaos: {note} =====");
        }
    }
}

/// Sends one inline command to Redis and returns its first reply line.
pub async fn redis_cmd(port: u16, cmd: &str) -> Option<String> {
    let mut stream = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(("127.0.0.1", port)))
        .await
        .ok()?
        .ok()?;
    stream.write_all(format!("{cmd}\r\n").as_bytes()).await.ok()?;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// `redis-server` on `port` with its data in `dir`; with `persist`, an
/// append-only file fsynced on every write (what a production Redis that
/// must survive a restart runs), else no persistence at all.
pub fn redis(port: u16, dir: &Path, persist: bool, logs: &Path) -> Proc {
    let mut args = vec![
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--save".into(),
        String::new(),
    ];
    let aof: [&str; 4] = if persist {
        ["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        ["--appendonly", "no", "--appendfsync", "no"]
    };
    args.extend(aof.iter().map(|s| s.to_string()));
    Proc::new("redis", Path::new("redis-server"), args, Vec::new(), logs)
}

/// Waits until Redis answers PING with PONG (not LOADING).
pub async fn redis_ready(port: u16, bound: Duration) -> Result<Duration, String> {
    let began = Instant::now();
    while began.elapsed() < bound {
        if redis_cmd(port, "PING").await.as_deref() == Some("+PONG") {
            return Ok(began.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("redis-server did not answer PING on {port} within {bound:?}"))
}

/// Waits until `GET /healthz` on `port` is 200.
pub async fn healthy(http: &reqwest::Client, port: u16, bound: Duration) -> Result<Duration, String> {
    let began = Instant::now();
    let url = format!("http://127.0.0.1:{port}/healthz");
    while began.elapsed() < bound {
        let answer = http.get(&url).timeout(Duration::from_millis(300)).send().await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            return Ok(began.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("vmcp on {port} not healthy within {bound:?}"))
}

/// The vmcp binary cargo built for this bench (release profile).
pub fn vmcp_binary() -> Result<PathBuf, String> {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_vmcp"));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: run `cargo build --release --bin vmcp` (cargo bench builds it too)",
            path.display()
        ))
    }
}

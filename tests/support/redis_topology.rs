//! Real Redis topologies on free ports in a temporary folder, torn down on
//! drop: a Redis Cluster (`redis-server --cluster-enabled yes` then
//! `redis-cli --cluster create`) and a Sentinel group (a master, a replica
//! and three `redis-sentinel`s).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::deps::free_port;

/// A folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let path = std::env::temp_dir().join(format!("vmcp-{what}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn(program: &str, args: &[String]) -> Child {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs (scripts/test.sh installs it): {e}"))
}

/// Starts `program` with the arguments `args(port)` gives on a free port,
/// and waits until the server answering there is this very process (its
/// `INFO server` names its pid). Another test's server can take a port
/// between the check and the bind; then this one exits or answers under a
/// foreign pid, and it starts again on another port.
async fn start_node(program: &str, password: Option<&str>, args: impl Fn(u16) -> Vec<String>) -> Node {
    for _ in 0..5 {
        let port = free_port();
        if let Some(pw) = password {
            require_password(port, pw);
        }
        let mut child = spawn(program, &args(port));
        if serves(&mut child, port).await {
            return Node {
                port,
                child: Some(child),
            };
        }
        let _ = child.kill().await;
    }
    panic!("{program} did not start on any of 5 free ports");
}

/// A data node's arguments: on 127.0.0.1, its files in `dir`, nothing
/// persisted, full syncs at once, and `password` for clients and its master.
fn data_args(port: u16, dir: &TempDir, password: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir.0.to_string_lossy(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
    ]
    .map(String::from)
    .into();
    if let Some(pw) = password {
        args.extend(["--requirepass", pw, "--masterauth", pw].map(String::from));
    }
    args
}

/// Whether `child` is what answers on `port` (10 s at most).
async fn serves(child: &mut Child, port: u16) -> bool {
    let Some(pid) = child.id() else { return false };
    let client = redis::Client::open(url(port)).expect("url");
    for _ in 0..400 {
        if !matches!(child.try_wait(), Ok(None)) {
            return false; // exited: most likely the port was taken
        }
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if let Ok(info) = redis::cmd("INFO").arg("server").query_async::<String>(&mut c).await {
                let theirs = info.lines().find_map(|l| l.strip_prefix("process_id:")).map(str::trim);
                return theirs == Some(pid.to_string().as_str());
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// The password of each server started with one, by port (for [`conn`] and [`role`]).
static PASSWORDS: std::sync::Mutex<Vec<(u16, String)>> = std::sync::Mutex::new(Vec::new());

fn require_password(port: u16, password: &str) {
    PASSWORDS.lock().unwrap().push((port, password.to_owned()));
}

fn url(port: u16) -> String {
    let passwords = PASSWORDS.lock().unwrap();
    match passwords.iter().find(|(p, _)| *p == port) {
        Some((_, pw)) => format!("redis://:{pw}@127.0.0.1:{port}/"),
        None => format!("redis://127.0.0.1:{port}/"),
    }
}

/// A connection to one server, once it answers PING (10 s at most).
pub async fn conn(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url(port)).expect("url");
    for _ in 0..400 {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis on {port} did not answer");
}

/// The first word of `ROLE` (`master`, `slave`, `sentinel`), if it answers.
pub async fn role(port: u16) -> Option<String> {
    let client = redis::Client::open(url(port)).ok()?;
    let mut c = tokio::time::timeout(Duration::from_millis(500), client.get_multiplexed_async_connection())
        .await
        .ok()?
        .ok()?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.ok()?;
    match role.first()? {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Polls `f` every 100 ms for up to `secs` seconds.
async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 10 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not reached within {secs} s: {what}");
}

/// Waits until every replica of the master on `master` has applied all
/// that the master had written when this was called (a failover loses what
/// the old master acknowledged but had not replicated; a fixed sleep is not
/// enough on a loaded machine).
pub async fn replicated(master: u16) {
    fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }
    let info = |port: u16| async move {
        let mut c = conn(port).await;
        redis::cmd("INFO")
            .arg("replication")
            .query_async::<String>(&mut c)
            .await
            .unwrap_or_default()
    };
    let at_master = info(master).await;
    let written: u64 = field(&at_master, "master_repl_offset")
        .and_then(|o| o.parse().ok())
        .expect("master_repl_offset");
    // `slave0:ip=127.0.0.1,port=N,state=online,...`
    let replicas: Vec<u16> = at_master
        .lines()
        .filter(|l| l.starts_with("slave") && l.contains("ip="))
        .filter_map(|l| l.split(',').find_map(|kv| kv.strip_prefix("port=")))
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    for replica in replicas {
        wait_for("the replica has applied the master's writes", 20, || async move {
            let at_replica = info(replica).await;
            field(&at_replica, "slave_repl_offset")
                .and_then(|o| o.parse::<u64>().ok())
                .is_some_and(|applied| applied >= written)
        })
        .await;
    }
}

/// One node of a topology.
pub struct Node {
    pub port: u16,
    child: Option<Child>,
}

impl Node {
    /// Kills the process (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// A Redis Cluster of `masters` masters with `replicas` replicas each.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    _dir: TempDir,
}

impl RedisCluster {
    pub async fn start(masters: usize, replicas: usize) -> Self {
        Self::start_with(masters, replicas, None).await
    }

    /// With `requirepass` (and `masterauth`) `password` on every node.
    pub async fn start_with(masters: usize, replicas: usize, password: Option<&str>) -> Self {
        let dir = TempDir::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let node = start_node("redis-server", password, |port| {
                let mut args = data_args(port, &dir, password);
                let bus = free_port().to_string();
                let config = format!("nodes-{port}.conf");
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-config-file",
                        &config,
                        "--cluster-node-timeout",
                        "1000",
                    ]
                    .map(String::from),
                );
                args
            })
            .await;
            nodes.push(node);
        }
        let mut args: Vec<String> = Vec::new();
        if let Some(pw) = password {
            args.extend(["-a".into(), pw.into(), "--no-auth-warning".into()]);
        }
        args.extend(["--cluster".into(), "create".into()]);
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .await
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes, _dir: dir };
        for n in &cluster.nodes {
            let port = n.port;
            wait_for("cluster_state:ok on every node", 30, || async move {
                let mut c = conn(port).await;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
            })
            .await;
        }
        let want = cluster.nodes.len();
        let first = cluster.nodes[0].port;
        wait_for("every node knows its role", 30, || async move {
            let mut c = conn(first).await;
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            nodes
                .lines()
                .filter(|l| l.contains("master") || l.contains("slave"))
                .count()
                == want
                && !nodes.contains("handshake")
        })
        .await;
        // A replica that never synced refuses to take over (its data is
        // too old for cluster-replica-validity-factor).
        for n in &cluster.nodes {
            let port = n.port;
            wait_for("every replica in sync", 30, || async move {
                let mut c = conn(port).await;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                info.contains("role:master") || info.contains("master_link_status:up")
            })
            .await;
        }
        cluster
    }

    /// `host:port` of every node (what `store.redis.cluster` takes).
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect()
    }

    /// The port of the master serving `key`'s slot.
    pub async fn master_of(&self, key: &str) -> u16 {
        let mut c = conn(self.nodes[0].port).await;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await
            .expect("keyslot");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut c)
            .await
            .expect("nodes");
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .expect("node address");
            for range in &fields[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        return port;
                    }
                }
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// The port of a replica of the master on `master`.
    pub async fn replica_of(&self, master: u16) -> u16 {
        let mut c = conn(master).await;
        let me: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut c)
            .await
            .expect("myid");
        let replicas: Vec<String> = redis::cmd("CLUSTER")
            .arg("REPLICAS")
            .arg(&me)
            .query_async(&mut c)
            .await
            .expect("replicas");
        replicas
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|a| a.split(['@', ':']).nth(1))
            .and_then(|p| p.parse().ok())
            .expect("a replica")
    }

    /// `CLUSTER FAILOVER` on a replica of the master on `master`; returns
    /// the replica's port once it is master.
    pub async fn failover(&self, master: u16) -> u16 {
        let port = self.replica_of(master).await;
        let mut r = conn(port).await;
        let _: String = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut r)
            .await
            .expect("failover");
        Self::promoted(port).await;
        port
    }

    /// Waits until the node on `port` is master (20 s at most).
    pub async fn promoted(port: u16) {
        wait_for("the replica is master", 20, || async move {
            role(port).await.as_deref() == Some("master")
        })
        .await;
    }

    pub fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }
}

/// A master, one replica and three sentinels watching `mymaster`.
pub struct SentinelGroup {
    pub master: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    _dir: TempDir,
}

pub const MASTER_NAME: &str = "mymaster";

impl SentinelGroup {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// With `(data, sentinels)` passwords: `requirepass` on the master and
    /// the replica (`masterauth` too), and on the sentinels.
    pub async fn start_with(passwords: Option<(&str, &str)>) -> Self {
        let dir = TempDir::new("sentinel");
        let data_pw = passwords.map(|(pw, _)| pw);
        let data = |port: u16| -> Vec<String> {
            let mut args = data_args(port, &dir, data_pw);
            args.extend(["--dbfilename".into(), format!("dump-{port}.rdb")]);
            args
        };
        let master = start_node("redis-server", data_pw, &data).await;
        let mp = master.port;
        let replica = start_node("redis-server", data_pw, |port| {
            let mut args = data(port);
            args.extend(["--replicaof".into(), "127.0.0.1".into(), mp.to_string()]);
            args
        })
        .await;
        let rp = replica.port;
        wait_for("the replica is in sync", 20, || async move {
            let mut c = conn(rp).await;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            info.contains("master_link_status:up")
        })
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let sentinel = start_node("redis-sentinel", passwords.map(|(_, spw)| spw), |port| {
                let file = dir.0.join(format!("sentinel-{port}.conf"));
                let mut conf = format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {mp} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.0.display()
                );
                if let Some((pw, spw)) = passwords {
                    conf.push_str(&format!(
                        "sentinel auth-pass {MASTER_NAME} {pw}\nrequirepass {spw}\nsentinel sentinel-pass {spw}\n"
                    ));
                }
                std::fs::write(&file, conf).expect("sentinel.conf");
                vec![file.to_string_lossy().into_owned()]
            })
            .await;
            sentinels.push(sentinel);
        }
        for s in &sentinels {
            let port = s.port;
            wait_for(
                "each sentinel knows the replica and the other sentinels",
                60,
                || async move {
                    let mut c = conn(port).await;
                    let fields: Vec<String> = redis::cmd("SENTINEL")
                        .arg("MASTER")
                        .arg(MASTER_NAME)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    let get = |k: &str| {
                        fields
                            .iter()
                            .position(|f| f == k)
                            .and_then(|i| fields.get(i + 1))
                            .and_then(|v| v.parse::<u32>().ok())
                    };
                    get("num-slaves") == Some(1) && get("num-other-sentinels") == Some(2)
                },
            )
            .await;
        }
        Self {
            master,
            replica,
            sentinels,
            _dir: dir,
        }
    }

    /// `host:port` of the sentinels (what `store.redis.sentinel.nodes` takes).
    pub fn addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect()
    }

    /// The master's port as the first sentinel names it.
    pub async fn current_master(&self) -> u16 {
        let mut c = conn(self.sentinels[0].port).await;
        let (_, port): (String, String) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME)
            .query_async(&mut c)
            .await
            .expect("master address");
        port.parse().expect("port")
    }

    /// `SENTINEL FAILOVER`, then waits until the replica is master and
    /// every sentinel names it; returns its port.
    pub async fn failover(&self) -> u16 {
        let old = self.current_master().await;
        let mut c = conn(self.sentinels[0].port).await;
        let _: String = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query_async(&mut c)
            .await
            .expect("SENTINEL FAILOVER");
        self.promoted(old).await
    }

    /// Waits until a node other than `old` is master for every sentinel.
    pub async fn promoted(&self, old: u16) -> u16 {
        let new = if old == self.master.port {
            self.replica.port
        } else {
            self.master.port
        };
        wait_for("the sentinels name the new master", 30, || async move {
            let mut all = true;
            for s in &self.sentinels {
                let mut c = conn(s.port).await;
                let addr: Option<(String, String)> = redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(MASTER_NAME)
                    .query_async(&mut c)
                    .await
                    .ok();
                all &= addr.is_some_and(|(_, p)| p == new.to_string());
            }
            all && role(new).await.as_deref() == Some("master")
        })
        .await;
        new
    }
}

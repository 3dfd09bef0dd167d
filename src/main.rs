//! `vmcp serve --config FILE` runs a replica; `vmcp validate --config FILE`
//! checks a configuration and exits non-zero naming the bad field;
//! `vmcp sessions ...` calls a replica's admin API.

mod cli;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vmcp::config::{Config, ProcessEnv};
use vmcp::telemetry::{self, Metrics};

/// mimalloc: per-thread free lists, no arena locks on the request path
/// (measured with `cargo bench --bench load`, README "Performance").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "vmcp", version, about = "A replicated virtual MCP server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a replica.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and exit.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List, show, delete or revoke sessions through a replica's admin API.
    Sessions(cli::Sessions),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sessions(args) => cli::run(args),
        Command::Validate { config } => {
            let loaded = Config::load(&config, &ProcessEnv)?;
            // The policy file too: parsed and checked against the schema.
            vmcp::policy::Policies::load(&loaded.policy, &loaded.replica_id, &prometheus::Registry::new())?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Serve { config: path } => {
            let config = Config::load(&path, &ProcessEnv)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            let result = runtime.block_on(serve(config, path));
            // Tasks still running (connections cut at the deadline) are dropped
            // here; a blocking call that never returns must not hold the exit.
            runtime.shutdown_timeout(EXIT_GRACE);
            result
        }
    }
}

/// What the process may take beyond its shutdown deadline to exit (dropping
/// tasks, flushing the log) before the watchdog ends it.
const EXIT_GRACE: Duration = Duration::from_secs(1);

async fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    telemetry::init_tracing(config.log.format);
    let metrics = Metrics::new(prometheus::Registry::new()).context("cannot register metrics")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        replica = %config.replica_id,
        backends = config.backends.len(),
        "vmcp {} serving MCP on http://{}/mcp",
        env!("CARGO_PKG_VERSION"),
        config.listen
    );
    let bound = config.http.drain_delay + config.http.shutdown_timeout;
    let app = vmcp::app::App::new(config, metrics)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_on_stop(shutdown.clone(), bound));
    tokio::spawn(reload_on_hangup(std::sync::Arc::clone(&app), path));
    vmcp::app::run(listener, app, shutdown).await;
    tracing::info!("vmcp stopped");
    Ok(())
}

/// On SIGHUP, re-reads the config file and applies what can change at
/// runtime: the static member list (scaling without Kubernetes).
async fn reload_on_hangup(app: std::sync::Arc<vmcp::app::App>, path: PathBuf) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot watch SIGHUP; membership reload disabled");
            return;
        };
        while hangups.recv().await.is_some() {
            if let Some(policies) = &app.guards.policies {
                match policies.reload() {
                    Ok(changed) => tracing::info!(changed, "SIGHUP: policies checked"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: policies not reloaded; the previous ones stay in force")
                    }
                }
            }
            match Config::load(&path, &ProcessEnv) {
                Ok(fresh) if fresh.membership.kind == vmcp::config::MembershipKind::Static => {
                    app.membership.set_static(&fresh.membership.members);
                    tracing::info!(file = %path.display(), "membership reloaded");
                }
                Ok(_) => tracing::info!("SIGHUP: membership is not static; nothing to reload"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: config not reloaded"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (app, path);
}

/// Cancels `shutdown` on SIGTERM or SIGINT, and from then on guarantees the
/// process exits within `bound` (drain delay + shutdown timeout) plus
/// [`EXIT_GRACE`] twice over, even if the runtime itself is stuck: a plain
/// thread ends the process then.
async fn signal_on_stop(shutdown: CancellationToken, bound: Duration) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops vmcp");
                let _ = ctrl_c.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("stop signal received: draining");
    shutdown.cancel();
    let watchdog = std::thread::Builder::new().name("exit-watchdog".into()).spawn(move || {
        std::thread::sleep(bound + EXIT_GRACE * 2);
        tracing::error!(?bound, "vmcp did not stop by its shutdown deadline; exiting now");
        std::process::exit(1);
    });
    if let Err(e) = watchdog {
        tracing::warn!(error = %e, "cannot start the exit watchdog");
    }
}

//! `vmcp serve --config FILE` runs a replica; `vmcp validate --config FILE`
//! checks a configuration and exits non-zero naming the bad field.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vmcp::config::{Config, ProcessEnv};
use vmcp::telemetry::{self, Metrics};

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Validate { config } => {
            Config::load(&config, &ProcessEnv)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Serve { config } => {
            let config = Config::load(&config, &ProcessEnv)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            runtime.block_on(serve(config))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
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
    let app = vmcp::app::App::new(config, metrics)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_on_stop(shutdown.clone()));
    vmcp::app::run(listener, app, shutdown).await;
    tracing::info!("vmcp stopped");
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signal_on_stop(shutdown: CancellationToken) {
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
}

//! `im-logic`: loads the configuration, sets up logging, starts the logic server and stops it on
//! Ctrl-C or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use im_logic::error::ErrorChain;
use im_logic::{Cli, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();

    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(error = %ErrorChain(&err), "configuration rejected");
            // As the engine and clap do for a usage error, so a supervisor can tell a bad
            // setting from a failed start.
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        tracing::info!("logic configuration is valid");
        return ExitCode::SUCCESS;
    }
    let server = match im_logic::start(config).await {
        Ok(server) => server,
        Err(err) => return fail(&err),
    };
    // A target of its own, so that a script can wait for this line whatever RUST_LOG filters.
    tracing::info!(target: "im_logic::ready", addr = %server.local_addr(), "logic listening");

    wait_for_stop_signal().await;
    tracing::info!("stop signal received; draining calls");
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// Logs to stderr with the filter in `RUST_LOG`, "info" when unset.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn fail(err: &(dyn std::error::Error + 'static)) -> ExitCode {
    tracing::error!(error = %ErrorChain(err), "logic failed to start");
    ExitCode::FAILURE
}

async fn wait_for_stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

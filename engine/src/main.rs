//! `im-engine`: runs one engine node until Ctrl-C or SIGTERM.

use clap::Parser;
use im_engine::{Cli, Config, Engine};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(error = %err, "configuration rejected");
            return std::process::ExitCode::from(2);
        }
    };
    let engine = match Engine::start(config) {
        Ok(engine) => engine,
        Err(err) => {
            tracing::error!(error = %err, "engine failed to start");
            return std::process::ExitCode::FAILURE;
        }
    };
    wait_for_signal();
    engine.shutdown();
    std::process::ExitCode::SUCCESS
}

/// Blocks until SIGINT or SIGTERM arrives.
fn wait_for_signal() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime for signals builds");
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    });
}

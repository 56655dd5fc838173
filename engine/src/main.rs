//! `im-engine`: runs one engine node until Ctrl-C or SIGTERM; SIGHUP reloads the TLS
//! certificate.

use clap::Parser;
use im_engine::{Cli, Config, Engine};
use tracing_subscriber::EnvFilter;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(error = %err, "configuration rejected");
            return std::process::ExitCode::from(2);
        }
    };
    if cli.check_config {
        // The certificate files are read as the start reads them, so that a bad file fails
        // here rather than after the other services have started.
        if let Err(err) = im_engine::check_certificate(&config) {
            tracing::error!(error = %err, "configuration rejected");
            return std::process::ExitCode::from(2);
        }
        tracing::info!("engine configuration is valid");
        return std::process::ExitCode::SUCCESS;
    }
    let engine = match Engine::start(config) {
        Ok(engine) => engine,
        Err(err) => {
            tracing::error!(error = %err, "engine failed to start");
            return std::process::ExitCode::FAILURE;
        }
    };
    wait_for_signal(&engine);
    engine.shutdown();
    std::process::ExitCode::SUCCESS
}

/// Blocks until SIGINT or SIGTERM arrives. Each SIGHUP meanwhile reloads the TLS
/// certificate.
fn wait_for_signal(engine: &Engine) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime for signals builds");
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler installs");
        let interrupt = tokio::signal::ctrl_c();
        tokio::pin!(interrupt);
        loop {
            tokio::select! {
                _ = &mut interrupt => return tracing::info!("SIGINT received"),
                _ = terminate.recv() => return tracing::info!("SIGTERM received"),
                _ = hangup.recv() => reload_tls(engine),
            }
        }
    });
}

fn reload_tls(engine: &Engine) {
    if !engine.is_tls() {
        tracing::info!("SIGHUP received; no TLS certificate is configured, nothing to reload");
        return;
    }
    if let Err(err) = engine.reload_tls() {
        tracing::error!(error = %err, "TLS certificate reload failed; keeping the previous certificate");
    }
}

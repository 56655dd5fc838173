//! `im-bench`: the load generator of the IM engine. See `im-bench --help`.

mod cache;
mod cli;
#[cfg(test)]
mod fake_engine;
mod limits;
mod machine;
mod phases;
mod prepare;
mod report;
mod session;
mod signin;
mod sources;
mod stats;
mod worker;
mod worker_protocol;
mod workers;

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    match cli.command {
        None => signin::run(cli.signin).await,
        Some(Command::Signin(args)) => signin::run(args).await,
        Some(Command::SigninWorker(args)) => worker::run(args).await,
    }
}

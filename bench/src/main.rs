//! `im-bench`: the load generator of the IM engine. See `im-bench --help`.

mod cache;
mod chat;
mod cli;
mod compare;
#[cfg(test)]
mod fake_engine;
mod group;
mod group_cache;
mod kernel;
mod limits;
mod machine;
mod messaging;
mod payload;
mod phases;
mod prepare;
mod report;
mod schedule;
mod session;
mod signin;
mod slow_readers;
mod sources;
mod stats;
mod traffic;
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
        Some(Command::Chat(args)) => chat::run(args).await,
        Some(Command::Group(args)) => group::run(args).await,
        Some(Command::Compare(args)) => compare::run(args).await,
    }
}

//! The `compare` scenario: the same raw WebSocket load against the engine and against peer
//! servers, one after the other on loopback, reported as one table with ratios.

mod measure;
mod process;
mod raw;
mod server;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::cli::CompareArgs;
use crate::limits;
use crate::machine;
use crate::sources;

pub(crate) use measure::Plan;
pub(crate) use server::TargetSpec;
pub(crate) use table::Figures;

/// Time a server gets beyond the sum of the phase lengths before its measurement is cut off.
const TARGET_SLACK: Duration = Duration::from_secs(60);

/// How the kernel memory per connection is read, printed with every table.
const KERNEL_SOURCE: &str = "kernel memory: growth of Slab in /proc/meminfo and of TCP mem \
    pages in /proc/net/sockstat from before the connects to the end of the idle hold, divided \
    by N; system-wide and counting the client and the server socket of each connection. \
    Other processes allocate and free kernel memory meanwhile, so a small figure means the \
    change was within that noise, and a figure below zero (the total fell) is not measurable \
    and shown as -; compare medians of several runs";

/// Errors that end a run before it measures anything.
#[derive(Debug, thiserror::Error)]
enum CompareError {
    #[error("raising the open-file limit failed")]
    FileLimit(#[source] std::io::Error),
    #[error("{connections} connections exceed the open-file limit {soft} minus {reserved} reserved descriptors; pass a smaller --connections")]
    TooManyConnections {
        connections: u64,
        soft: u64,
        reserved: u64,
    },
    #[error("unknown target {0:?}; use engine, rust-tungstenite or node-ws")]
    UnknownTarget(String),
    #[error("invalid --external {0:?}; expected NAME=HOST:PORT")]
    InvalidExternal(String),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("writing the results to {path} failed")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The results of one run, as written to the JSON file.
#[derive(Debug, Serialize)]
pub(crate) struct CompareReport {
    pub(crate) command: String,
    pub(crate) machine: String,
    pub(crate) date: String,
    pub(crate) connections: u64,
    pub(crate) kernel_memory_source: &'static str,
    /// The figures of the only pass, or the medians over all passes.
    pub(crate) targets: Vec<Figures>,
    /// Each pass's figures, in the order of `targets`, when there was more than one pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) passes: Vec<Vec<Figures>>,
}

/// Runs the comparison and returns the exit code: success only when every server started
/// and every phase finished without an error.
pub(crate) async fn run(args: CompareArgs) -> ExitCode {
    match execute(&args).await {
        Ok(report) => {
            // Median figures sum the errors and keep the fewest connections of any pass.
            let clean = report.targets.iter().all(|figures| {
                figures.errors.is_empty() && figures.connections_open == args.connections
            });
            if clean {
                ExitCode::SUCCESS
            } else {
                eprintln!("im-bench: some servers had errors or opened fewer connections; see the errors above");
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("im-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(args: &CompareArgs) -> Result<CompareReport, CompareError> {
    let file_limit = limits::raise_file_limit().map_err(CompareError::FileLimit)?;
    if args.connections > file_limit.connection_capacity() {
        return Err(CompareError::TooManyConnections {
            connections: args.connections,
            soft: file_limit.soft,
            reserved: limits::RESERVED_FILES,
        });
    }
    let specs = target_specs(args)?;
    let plan = plan(args);
    let machine = machine::describe();
    println!("im-bench compare");
    println!("  machine      {machine}");
    println!("  connections  {}", args.connections);
    let names: Vec<&str> = specs.iter().map(TargetSpec::name).collect();
    println!("  targets      {}", names.join(","));
    if let Some(threads) = args.server_threads {
        println!("  threads      {threads} per server (node-ws: one)");
    }
    if args.passes > 1 {
        println!(
            "  passes       {} (every other one in reverse order; medians)",
            args.passes
        );
    }

    let date = machine::utc_now();
    let mut passes = Vec::new();
    for pass in 0..args.passes {
        let targets = compare_pass(&specs, &plan, pass).await;
        if args.passes > 1 {
            println!("\npass {} of {}", pass + 1, args.passes);
            print!("{}", table::to_text(&table::rows(&targets)));
        }
        passes.push(targets);
    }
    let (targets, rows, passes) = match passes.len() {
        1 => {
            let targets = passes.pop().unwrap_or_default();
            let rows = table::rows(&targets);
            (targets, rows, Vec::new())
        }
        _ => (
            table::median_figures(&passes),
            table::median_rows(&passes),
            passes,
        ),
    };
    let report = CompareReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        date,
        connections: args.connections,
        kernel_memory_source: KERNEL_SOURCE,
        targets,
        passes,
    };
    println!();
    if report.passes.len() > 1 {
        println!("{}", medians_note(report.passes.len()));
    }
    print!("{}", table::to_text(&rows));
    println!("{KERNEL_SOURCE}");
    print_errors(&report.targets);
    if !args.no_results {
        write_results(&args.results_dir, &report, &rows)?;
    }
    Ok(report)
}

/// Measures every target once: in the given order on even passes, in reverse on odd ones, so
/// that no server always runs first on a machine that drifts. Returns the figures in the
/// given order.
async fn compare_pass(specs: &[TargetSpec], plan: &Plan, pass: u32) -> Vec<Figures> {
    if pass.is_multiple_of(2) {
        return compare_targets(specs, plan).await;
    }
    let reversed: Vec<TargetSpec> = specs.iter().rev().cloned().collect();
    let mut figures = compare_targets(&reversed, plan).await;
    figures.reverse();
    figures
}

fn medians_note(passes: usize) -> String {
    format!(
        "medians of {passes} passes, leaving out the passes in which a server had errors; each \
         ratio column is the median of the ratios of single passes"
    )
}

fn plan(args: &CompareArgs) -> Plan {
    let sources = args.sources.unwrap_or_else(|| {
        sources::default_sources(
            usize::try_from(args.connections).unwrap_or(usize::MAX),
            sources::ports_per_source(),
        ) as u64
    });
    Plan {
        connections: args.connections,
        sources: usize::try_from(sources).unwrap_or(1),
        concurrency: usize::try_from(args.concurrency).unwrap_or(usize::MAX),
        connect_limit: Duration::from_secs(args.connect_timeout_secs),
        timeout: Duration::from_millis(args.timeout_ms),
        hold: Duration::from_secs(args.hold_secs),
        rounds: args.rounds,
        round_interval: Duration::from_millis(args.round_interval_ms),
        saturation: Duration::from_secs(args.saturation_secs),
    }
}

fn target_specs(args: &CompareArgs) -> Result<Vec<TargetSpec>, CompareError> {
    let mut specs = named_specs(args)?;
    for external in &args.external {
        specs.push(parse_external(external)?);
    }
    Ok(specs)
}

fn parse_external(text: &str) -> Result<TargetSpec, CompareError> {
    let invalid = || CompareError::InvalidExternal(text.to_owned());
    let (name, addr) = text.split_once('=').ok_or_else(invalid)?;
    let addr = addr.parse().map_err(|_| invalid())?;
    if name.is_empty() {
        return Err(invalid());
    }
    Ok(TargetSpec::External {
        name: name.to_owned(),
        addr,
        pid: None,
        path: "/".to_owned(),
    })
}

fn named_specs(args: &CompareArgs) -> Result<Vec<TargetSpec>, CompareError> {
    args.targets
        .iter()
        .map(|name| match name.as_str() {
            "engine" => Ok(server::engine_spec(
                args.engine_bin.clone(),
                args.server_threads,
            )?),
            "rust-tungstenite" => Ok(server::rust_peer_spec(
                args.rust_peer_bin.clone(),
                args.server_threads,
            )),
            "node-ws" => Ok(server::node_peer_spec(
                args.node_bin.clone(),
                args.node_peer_script.clone(),
            )),
            other => Err(CompareError::UnknownTarget(other.to_owned())),
        })
        .collect()
}

/// Measures each server in turn: starts it (or checks an external one), runs every phase
/// within a time limit, and stops it before the next. A server that fails to start gets
/// empty figures with the error.
pub(crate) async fn compare_targets(specs: &[TargetSpec], plan: &Plan) -> Vec<Figures> {
    let mut results = Vec::new();
    for spec in specs {
        results.push(measure_target(spec, plan).await);
    }
    results
}

async fn measure_target(spec: &TargetSpec, plan: &Plan) -> Figures {
    let failed = |error: String| Figures {
        target: spec.name().to_owned(),
        errors: [(error, 1)].into_iter().collect(),
        ..Figures::default()
    };
    eprintln!("compare: {}: starting", spec.name());
    // Dropping `server` at the end of this function kills a started process.
    let server = match spec.start().await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("compare: {error}");
            return failed(error.to_string());
        }
    };
    let limit = plan.connect_limit
        + plan.hold
        + plan.round_interval * plan.rounds
        + plan.saturation
        + 3 * plan.timeout
        + TARGET_SLACK;
    match tokio::time::timeout(limit, measure::measure(&server, plan)).await {
        Ok(measurement) => Figures::from_measurement(spec.name(), &measurement),
        Err(_) => failed(format!("measurement timed out after {} s", limit.as_secs())),
    }
}

fn print_errors(results: &[Figures]) {
    for figures in results {
        for (kind, count) in &figures.errors {
            println!("  {} errors: {kind}: {count}", figures.target);
        }
    }
}

/// Writes `compare-DATE.json` and `compare-DATE.md` into `dir`, DATE being the UTC time.
fn write_results(
    dir: &Path,
    report: &CompareReport,
    rows: &[Vec<String>],
) -> Result<(), CompareError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| CompareError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    let stem = format!("compare-{}", report.date.replace(':', ""));
    let json_path = dir.join(format!("{stem}.json"));
    let json = serde_json::to_string_pretty(report)
        .map_err(|error| write_error(&json_path)(std::io::Error::other(error)))?;
    std::fs::write(&json_path, json + "\n").map_err(write_error(&json_path))?;
    let markdown_path = dir.join(format!("{stem}.md"));
    std::fs::write(&markdown_path, markdown(report, rows)).map_err(write_error(&markdown_path))?;
    println!(
        "results: {} and {}",
        json_path.display(),
        markdown_path.display()
    );
    Ok(())
}

fn markdown(report: &CompareReport, rows: &[Vec<String>]) -> String {
    let mut text = format!(
        "# im-bench compare, {}\n\n```\n{}\n```\n\nMachine: {}\n\n",
        report.date, report.command, report.machine
    );
    if report.passes.len() > 1 {
        text.push_str(&format!("{}.\n\n", medians_note(report.passes.len())));
    }
    text.push_str(&format!(
        "{}\n{}.\n",
        table::to_markdown(rows),
        KERNEL_SOURCE
    ));
    for (index, pass) in report.passes.iter().enumerate() {
        text.push_str(&format!(
            "\n## Pass {} of {}\n\n{}",
            index + 1,
            report.passes.len(),
            table::to_markdown(&table::rows(pass))
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use futures::{SinkExt as _, StreamExt as _};
    use std::collections::BTreeMap;
    use tokio::net::TcpListener;

    use super::*;

    /// Starts a tokio-tungstenite echo server on a free loopback port in this process.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = socket.next().await {
                        if message.is_binary() && socket.send(message).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn small_plan(connections: u64) -> Plan {
        Plan {
            connections,
            sources: 2,
            concurrency: 16,
            connect_limit: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            hold: Duration::from_millis(100),
            rounds: 3,
            round_interval: Duration::from_millis(20),
            saturation: Duration::from_millis(500),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compare_against_echo_server() {
        let addr = echo_server().await;
        let spec = TargetSpec::External {
            name: "echo".to_owned(),
            addr,
            pid: Some(std::process::id()),
            path: "/".to_owned(),
        };

        let results = compare_targets(&[spec.clone(), spec], &small_plan(50)).await;

        assert_eq!(results.len(), 2);
        let figures = &results[0];
        assert_eq!(figures.errors, BTreeMap::new());
        assert_eq!(figures.connections_open, 50);
        assert!(figures
            .connections_per_second
            .is_some_and(|rate| rate > 0.0));
        assert!(figures.round_trip_p50_ms.is_some_and(|ms| ms > 0.0));
        assert!(figures.round_trip_p999_ms >= figures.round_trip_p50_ms);
        assert!(figures.messages_per_second.is_some_and(|rate| rate > 50.0));
        assert!(figures.cpu_seconds_per_million_messages.is_some());
        assert!(figures.rss_bytes_per_idle_connection.is_some());
        let rows = table::rows(&results);
        assert_eq!(rows[0], ["metric", "echo", "echo", "echo / echo"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reversed_pass_keeps_target_order() {
        let addr = echo_server().await;
        let spec = |name: &str| TargetSpec::External {
            name: name.to_owned(),
            addr,
            pid: Some(std::process::id()),
            path: "/".to_owned(),
        };
        let specs = [spec("first"), spec("second")];

        let results = compare_pass(&specs, &small_plan(5), 1).await;

        let names: Vec<&str> = results.iter().map(|f| f.target.as_str()).collect();
        assert_eq!(names, ["first", "second"]);
        assert!(results.iter().all(|f| f.connections_open == 5));
    }

    #[test]
    fn markdown_of_passes_has_medians_and_each_pass() {
        let figures = |target: &str| Figures {
            target: target.to_owned(),
            messages_per_second: Some(100.0),
            ..Figures::default()
        };
        let passes = vec![
            vec![figures("engine"), figures("peer")],
            vec![figures("engine"), figures("peer")],
        ];
        let report = CompareReport {
            command: "im-bench compare --passes 2".to_owned(),
            machine: "test".to_owned(),
            date: "2026-01-01T000000Z".to_owned(),
            connections: 1,
            kernel_memory_source: KERNEL_SOURCE,
            targets: table::median_figures(&passes),
            passes,
        };

        let text = markdown(&report, &table::median_rows(&report.passes));

        assert!(text.contains("medians of 2 passes"), "{text}");
        assert!(text.contains("## Pass 1 of 2"), "{text}");
        assert!(text.contains("## Pass 2 of 2"), "{text}");
    }

    #[tokio::test]
    async fn compare_reports_server_not_started() {
        let spec = TargetSpec::Spawn {
            name: "missing".to_owned(),
            program: PathBuf::from("/nonexistent/im-bench-peer"),
            args: Vec::new(),
            env: Vec::new(),
            path: "/".to_owned(),
        };

        let results = compare_targets(&[spec], &small_plan(1)).await;

        assert_eq!(results[0].target, "missing");
        assert_eq!(results[0].connections_open, 0);
        assert_eq!(results[0].errors.len(), 1);
    }

    #[test]
    fn external_flag_parsed() {
        let spec = parse_external("peer=127.0.0.1:9000").expect("valid");

        let TargetSpec::External {
            name, addr, pid, ..
        } = spec
        else {
            panic!("external expected");
        };
        assert_eq!(name, "peer");
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(pid, None);
    }

    #[test]
    fn external_flag_invalid() {
        assert!(parse_external("peer").is_err());
        assert!(parse_external("=127.0.0.1:1").is_err());
        assert!(parse_external("peer=localhost").is_err());
    }
}

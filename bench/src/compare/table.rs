//! Per-connection figures of each server, ratios of the first server to each other one, and
//! their text, Markdown and JSON forms.

use std::collections::BTreeMap;

use serde::Serialize;

use super::measure::Measurement;
use crate::kernel;

/// The figures of one server that the table shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Figures {
    pub(crate) target: String,
    pub(crate) connections_open: u64,
    pub(crate) rss_bytes_per_idle_connection: Option<f64>,
    pub(crate) connections_per_second: Option<f64>,
    pub(crate) round_trip_p50_ms: Option<f64>,
    pub(crate) round_trip_p99_ms: Option<f64>,
    pub(crate) round_trip_p999_ms: Option<f64>,
    pub(crate) messages_per_second: Option<f64>,
    pub(crate) cpu_seconds_per_million_messages: Option<f64>,
    /// CPU time of the bench itself per million messages, which shares the machine's cores.
    pub(crate) bench_cpu_seconds_per_million_messages: Option<f64>,
    /// Growth of the kernel's `Slab` (/proc/meminfo) per connection, both ends together.
    pub(crate) kernel_slab_bytes_per_connection: Option<f64>,
    /// Growth of TCP `mem` pages (/proc/net/sockstat) per connection, both ends together.
    pub(crate) kernel_tcp_buffer_bytes_per_connection: Option<f64>,
    pub(crate) errors: BTreeMap<String, u64>,
}

impl Figures {
    /// Divides what was measured on one server into per-connection and per-second figures.
    pub(crate) fn from_measurement(target: &str, measurement: &Measurement) -> Figures {
        let opened = measurement.opened;
        let quantile_ms = |quantile: f64| {
            (!measurement.round_trips.is_empty())
                .then(|| measurement.round_trips.value_at_quantile(quantile) as f64 / 1000.0)
        };
        let messages_per_second = rate(
            measurement.saturation_messages,
            measurement.saturation_elapsed.as_secs_f64(),
        );
        let per_million = |cpu: Option<std::time::Duration>| {
            let cpu = cpu?;
            (measurement.saturation_messages > 0)
                .then(|| cpu.as_secs_f64() * 1_000_000.0 / measurement.saturation_messages as f64)
        };
        Figures {
            target: target.to_owned(),
            connections_open: opened,
            rss_bytes_per_idle_connection: kernel::per_connection(
                measurement.rss_start,
                measurement.rss_idle,
                opened,
            ),
            connections_per_second: rate(opened, measurement.connect_elapsed.as_secs_f64()),
            round_trip_p50_ms: quantile_ms(0.5),
            round_trip_p99_ms: quantile_ms(0.99),
            round_trip_p999_ms: quantile_ms(0.999),
            messages_per_second,
            cpu_seconds_per_million_messages: per_million(measurement.saturation_cpu),
            bench_cpu_seconds_per_million_messages: per_million(measurement.saturation_bench_cpu),
            kernel_slab_bytes_per_connection: kernel::per_connection(
                measurement.kernel_before.slab,
                measurement.kernel_idle.slab,
                opened,
            ),
            kernel_tcp_buffer_bytes_per_connection: kernel::per_connection(
                measurement.kernel_before.tcp_buffers,
                measurement.kernel_idle.tcp_buffers,
                opened,
            ),
            errors: measurement.errors.clone(),
        }
    }
}

fn rate(count: u64, seconds: f64) -> Option<f64> {
    (count > 0 && seconds > 0.0).then(|| count as f64 / seconds)
}

/// One row of the table: a label and how to read its value from [`Figures`].
struct Metric {
    label: &'static str,
    value: fn(&Figures) -> Option<f64>,
    decimals: usize,
    /// True for a system-wide kernel reading, which other processes move as well. Its value
    /// is shown as "-" when it is below zero, since no connection frees kernel memory.
    system_wide: bool,
}

const METRICS: [Metric; 10] = [
    Metric {
        label: "server RSS bytes per idle connection",
        value: |figures| figures.rss_bytes_per_idle_connection,
        decimals: 0,
        system_wide: false,
    },
    Metric {
        label: "kernel Slab bytes per connection (both ends)",
        value: |figures| figures.kernel_slab_bytes_per_connection,
        decimals: 0,
        system_wide: true,
    },
    Metric {
        label: "kernel TCP buffer bytes per connection (both ends)",
        value: |figures| figures.kernel_tcp_buffer_bytes_per_connection,
        decimals: 0,
        system_wide: true,
    },
    Metric {
        label: "connections per second",
        value: |figures| figures.connections_per_second,
        decimals: 0,
        system_wide: false,
    },
    Metric {
        label: "round trip p50 (ms)",
        value: |figures| figures.round_trip_p50_ms,
        decimals: 3,
        system_wide: false,
    },
    Metric {
        label: "round trip p99 (ms)",
        value: |figures| figures.round_trip_p99_ms,
        decimals: 3,
        system_wide: false,
    },
    Metric {
        label: "round trip p99.9 (ms)",
        value: |figures| figures.round_trip_p999_ms,
        decimals: 3,
        system_wide: false,
    },
    Metric {
        label: "messages per second at saturation",
        value: |figures| figures.messages_per_second,
        decimals: 0,
        system_wide: false,
    },
    Metric {
        label: "server CPU seconds per million messages",
        value: |figures| figures.cpu_seconds_per_million_messages,
        decimals: 2,
        system_wide: false,
    },
    Metric {
        label: "bench CPU seconds per million messages",
        value: |figures| figures.bench_cpu_seconds_per_million_messages,
        decimals: 2,
        system_wide: false,
    },
];

/// Returns `baseline / other`, or `None` when either is missing or not positive. Every
/// metric is positive when measured, so zero or less is noise (for example a kernel reading
/// that shrank while connections opened) and has no meaningful ratio.
pub(crate) fn ratio(baseline: Option<f64>, other: Option<f64>) -> Option<f64> {
    let (baseline, other) = (baseline?, other?);
    (baseline > 0.0 && other > 0.0).then(|| baseline / other)
}

/// Returns the median of the measured values, the mean of the middle two for an even count,
/// or `None` when none was measured.
pub(crate) fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut values: Vec<f64> = values
        .into_iter()
        .flatten()
        .filter(|value| value.is_finite())
        .collect();
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        len if len % 2 == 1 => Some(values[middle]),
        _ => Some((values[middle - 1] + values[middle]) / 2.0),
    }
}

/// Returns the passes in which none of the servers at `indexes` had an error, or every pass
/// when each one had some.
fn clean_passes<'a>(passes: &'a [Vec<Figures>], indexes: &[usize]) -> Vec<&'a Vec<Figures>> {
    let clean: Vec<_> = passes
        .iter()
        .filter(|pass| indexes.iter().all(|index| pass[*index].errors.is_empty()))
        .collect();
    if clean.is_empty() {
        passes.iter().collect()
    } else {
        clean
    }
}

/// Returns each server's median figures over several passes, in the order of each pass,
/// leaving out the passes in which it had errors. Connections open is the lowest of any pass, and errors
/// are summed over all passes.
pub(crate) fn median_figures(passes: &[Vec<Figures>]) -> Vec<Figures> {
    let Some(first) = passes.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|index| {
            let clean = clean_passes(passes, &[index]);
            let of = |value: fn(&Figures) -> Option<f64>| {
                median(clean.iter().map(|pass| value(&pass[index])))
            };
            let mut errors = BTreeMap::new();
            for pass in passes {
                for (kind, count) in &pass[index].errors {
                    *errors.entry(kind.clone()).or_insert(0) += count;
                }
            }
            Figures {
                target: first[index].target.clone(),
                connections_open: passes
                    .iter()
                    .map(|pass| pass[index].connections_open)
                    .min()
                    .unwrap_or(0),
                rss_bytes_per_idle_connection: of(|f| f.rss_bytes_per_idle_connection),
                connections_per_second: of(|f| f.connections_per_second),
                round_trip_p50_ms: of(|f| f.round_trip_p50_ms),
                round_trip_p99_ms: of(|f| f.round_trip_p99_ms),
                round_trip_p999_ms: of(|f| f.round_trip_p999_ms),
                messages_per_second: of(|f| f.messages_per_second),
                cpu_seconds_per_million_messages: of(|f| f.cpu_seconds_per_million_messages),
                bench_cpu_seconds_per_million_messages: of(|f| {
                    f.bench_cpu_seconds_per_million_messages
                }),
                kernel_slab_bytes_per_connection: of(|f| f.kernel_slab_bytes_per_connection),
                kernel_tcp_buffer_bytes_per_connection: of(|f| {
                    f.kernel_tcp_buffer_bytes_per_connection
                }),
                errors,
            }
        })
        .collect()
}

/// The comparison table: a header row and one row per metric, as cells of text. The first
/// server is the baseline, and each other server adds a `first / other` ratio column.
pub(crate) fn rows(results: &[Figures]) -> Vec<Vec<String>> {
    rows_with(results, |metric, other| {
        ratio((metric.value)(&results[0]), (metric.value)(&results[other]))
    })
}

/// Builds the table of the median figures over `passes`. Each ratio column is the median of the
/// ratios of the single passes in which neither server had errors, which cancels drift that
/// hits both servers of one pass.
pub(crate) fn median_rows(passes: &[Vec<Figures>]) -> Vec<Vec<String>> {
    rows_with(&median_figures(passes), |metric, other| {
        median(
            clean_passes(passes, &[0, other])
                .iter()
                .map(|pass| ratio((metric.value)(&pass[0]), (metric.value)(&pass[other]))),
        )
    })
}

/// Builds the table, with `ratio_of(metric, index)` giving the ratio of the first server to
/// the server at `index`.
fn rows_with(
    results: &[Figures],
    ratio_of: impl Fn(&Metric, usize) -> Option<f64>,
) -> Vec<Vec<String>> {
    let mut header = vec!["metric".to_owned()];
    header.extend(results.iter().map(|figures| figures.target.clone()));
    if let Some((first, others)) = results.split_first() {
        header.extend(
            others
                .iter()
                .map(|other| format!("{} / {}", first.target, other.target)),
        );
    }
    let mut table = vec![header];
    for metric in &METRICS {
        let mut row = vec![metric.label.to_owned()];
        row.extend(results.iter().map(|figures| {
            let value = (metric.value)(figures);
            let value = value.filter(|value| !(metric.system_wide && *value < 0.0));
            format_value(value, metric.decimals)
        }));
        row.extend((1..results.len()).map(|other| format_value(ratio_of(metric, other), 2)));
        table.push(row);
    }
    table
}

fn format_value(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(value) if value.is_finite() => format!("{value:.decimals$}"),
        _ => "-".to_owned(),
    }
}

/// Renders the table with aligned columns for a terminal.
pub(crate) fn to_text(table: &[Vec<String>]) -> String {
    let columns = table.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            table
                .iter()
                .filter_map(|row| row.get(column))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in table {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(column, cell)| match column {
                0 => format!("{cell:<width$}", width = widths[column]),
                _ => format!("{cell:>width$}", width = widths[column]),
            })
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// Renders the table as a Markdown table.
pub(crate) fn to_markdown(table: &[Vec<String>]) -> String {
    let mut text = String::new();
    for (index, row) in table.iter().enumerate() {
        text.push_str(&format!("| {} |\n", row.join(" | ")));
        if index == 0 {
            let rule = vec!["---"; row.len()].join(" | ");
            text.push_str(&format!("| {rule} |\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kernel::KernelMemory;
    use crate::stats;

    fn measurement() -> Measurement {
        let mut round_trips = stats::latency_histogram();
        for micros in 1..=1000 {
            stats::record(&mut round_trips, Duration::from_micros(micros));
        }
        Measurement {
            opened: 100,
            connect_elapsed: Duration::from_secs(2),
            rss_start: Some(1_000_000),
            rss_idle: Some(1_500_000),
            kernel_before: KernelMemory {
                slab: Some(10_000_000),
                tcp_buffers: Some(4096),
            },
            kernel_idle: KernelMemory {
                slab: Some(10_300_000),
                tcp_buffers: Some(4096 * 3),
            },
            round_trips,
            saturation_messages: 500_000,
            saturation_elapsed: Duration::from_secs(5),
            saturation_cpu: Some(Duration::from_secs(4)),
            saturation_bench_cpu: Some(Duration::from_secs(1)),
            errors: BTreeMap::new(),
        }
    }

    fn figures(target: &str, rss: f64, rate: f64) -> Figures {
        Figures {
            target: target.to_owned(),
            rss_bytes_per_idle_connection: Some(rss),
            messages_per_second: Some(rate),
            ..Figures::default()
        }
    }

    /// Builds one pass of the engine and `peer`, each given as (RSS per connection, messages
    /// per second).
    fn pass(peer: &str, engine: (f64, f64), other: (f64, f64)) -> Vec<Figures> {
        vec![
            figures("engine", engine.0, engine.1),
            figures(peer, other.0, other.1),
        ]
    }

    #[test]
    fn figures_divide_per_connection() {
        let figures = Figures::from_measurement("engine", &measurement());

        assert_eq!(figures.connections_open, 100);
        assert_eq!(figures.rss_bytes_per_idle_connection, Some(5000.0));
        assert_eq!(figures.connections_per_second, Some(50.0));
        assert_eq!(figures.messages_per_second, Some(100_000.0));
        assert_eq!(figures.cpu_seconds_per_million_messages, Some(8.0));
        assert_eq!(figures.bench_cpu_seconds_per_million_messages, Some(2.0));
        assert_eq!(figures.kernel_slab_bytes_per_connection, Some(3000.0));
        assert_eq!(figures.kernel_tcp_buffer_bytes_per_connection, Some(81.92));
    }

    #[test]
    fn figures_quantiles_in_milliseconds() {
        let figures = Figures::from_measurement("engine", &measurement());

        let p50 = figures.round_trip_p50_ms.expect("p50");
        let p999 = figures.round_trip_p999_ms.expect("p99.9");
        assert!((p50 - 0.5).abs() < 0.01, "p50 {p50}");
        assert!((p999 - 0.999).abs() < 0.01, "p99.9 {p999}");
    }

    #[test]
    fn figures_without_replies_have_no_rates() {
        let mut empty = measurement();
        empty.round_trips = stats::latency_histogram();
        empty.saturation_messages = 0;
        empty.rss_idle = None;

        let figures = Figures::from_measurement("x", &empty);

        assert_eq!(figures.round_trip_p50_ms, None);
        assert_eq!(figures.messages_per_second, None);
        assert_eq!(figures.cpu_seconds_per_million_messages, None);
        assert_eq!(figures.rss_bytes_per_idle_connection, None);
    }

    #[test]
    fn ratio_cases() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(125.0), Some(-29.0)), None);
        assert_eq!(ratio(Some(-1.0), Some(2.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }

    #[test]
    fn rows_have_ratio_columns() {
        let results = [
            figures("engine", 1000.0, 50_000.0),
            figures("rust", 4000.0, 25_000.0),
            figures("node", 0.0, 100_000.0),
        ];

        let table = rows(&results);

        assert_eq!(
            table[0],
            [
                "metric",
                "engine",
                "rust",
                "node",
                "engine / rust",
                "engine / node"
            ]
        );
        let rss = &table[1];
        assert_eq!(rss[0], "server RSS bytes per idle connection");
        assert_eq!(&rss[1..], ["1000", "4000", "0", "0.25", "-"]);
        let rate = table
            .iter()
            .find(|row| row[0] == "messages per second at saturation")
            .expect("rate row");
        assert_eq!(&rate[1..], ["50000", "25000", "100000", "2.00", "0.50"]);
        let p50 = table
            .iter()
            .find(|row| row[0] == "round trip p50 (ms)")
            .expect("p50 row");
        assert_eq!(&p50[1..], ["-", "-", "-", "-", "-"]);
    }

    #[test]
    fn negative_kernel_figures_are_not_shown() {
        let results = [Figures {
            kernel_slab_bytes_per_connection: Some(-120.0),
            kernel_tcp_buffer_bytes_per_connection: Some(82.0),
            rss_bytes_per_idle_connection: Some(-3.0),
            ..figures("engine", 0.0, 1.0)
        }];

        let table = rows(&results);

        let cell = |label: &str| {
            let row = table.iter().find(|row| row[0] == label).expect(label);
            row[1].clone()
        };
        assert_eq!(cell("kernel Slab bytes per connection (both ends)"), "-");
        assert_eq!(
            cell("kernel TCP buffer bytes per connection (both ends)"),
            "82"
        );
        assert_eq!(cell("server RSS bytes per idle connection"), "-3");
    }

    #[test]
    fn rows_of_one_target_have_no_ratios() {
        let table = rows(&[figures("engine", 1.0, 1.0)]);

        assert!(table.iter().all(|row| row.len() == 2));
        assert_eq!(table.len(), 1 + METRICS.len());
    }

    #[test]
    fn median_of_odd_even_and_missing() {
        assert_eq!(median([Some(3.0), Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(
            median([Some(4.0), None, Some(1.0), Some(2.0), Some(3.0)]),
            Some(2.5)
        );
        assert_eq!(median([None, None]), None);
        assert_eq!(median([Some(f64::NAN), Some(5.0)]), Some(5.0));
    }

    #[test]
    fn median_rows_take_median_of_pass_ratios() {
        let mut passes = vec![
            pass("rust", (1000.0, 10.0), (2000.0, 10.0)),
            pass("rust", (3000.0, 30.0), (1000.0, 10.0)),
            pass("rust", (2000.0, 80.0), (8000.0, 40.0)),
        ];
        for (pass, open) in passes.iter_mut().zip([50, 49, 50]) {
            pass[0].connections_open = open;
        }

        let medians = median_figures(&passes);
        let table = median_rows(&passes);

        assert_eq!(medians[0].rss_bytes_per_idle_connection, Some(2000.0));
        assert_eq!(medians[1].rss_bytes_per_idle_connection, Some(2000.0));
        assert_eq!(medians[0].connections_open, 49);
        // The pass ratios are 0.5, 3.0 and 0.25, whose median differs from 2000 / 2000.
        assert_eq!(&table[1][1..], ["2000", "2000", "0.50"]);
        let rate = table
            .iter()
            .find(|row| row[0] == "messages per second at saturation")
            .expect("rate row");
        assert_eq!(&rate[1..], ["30", "10", "2.00"]);
    }

    #[test]
    fn passes_with_errors_left_out_of_medians() {
        let mut passes = vec![
            pass("peer", (1000.0, 10.0), (1000.0, 10.0)),
            pass("peer", (1000.0, 10.0), (1000.0, 10.0)),
            pass("peer", (1000.0, 10.0), (9.0, 99_999.0)),
        ];
        passes[2][1].errors.insert("connect failed".to_owned(), 100);

        let medians = median_figures(&passes);
        let table = median_rows(&passes);

        assert_eq!(medians[1].messages_per_second, Some(10.0));
        assert_eq!(medians[1].errors["connect failed"], 100);
        assert_eq!(&table[1][1..], ["1000", "1000", "1.00"]);
    }

    #[test]
    fn markdown_has_rule_after_header() {
        let table = vec![
            vec!["metric".to_owned(), "a".to_owned()],
            vec!["x".to_owned(), "1".to_owned()],
        ];

        let markdown = to_markdown(&table);

        assert_eq!(markdown, "| metric | a |\n| --- | --- |\n| x | 1 |\n");
    }

    #[test]
    fn text_aligns_columns() {
        let table = vec![
            vec!["metric".to_owned(), "a".to_owned()],
            vec!["x".to_owned(), "1000".to_owned()],
        ];

        let text = to_text(&table);

        assert_eq!(text, "metric     a\nx       1000\n");
    }
}

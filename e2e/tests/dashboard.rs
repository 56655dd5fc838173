//! The Grafana dashboard and the Prometheus configuration in deploy/ against the metrics that
//! a running engine node and logic tier export.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::Stack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Words of PromQL that are neither functions nor metric names.
const KEYWORDS: [&str; 9] = [
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "start",
];

/// Aggregation operators, which may put `by (...)` or `without (...)` before their `(`.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Suffixes of the series of a histogram family.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn load_dashboard() -> Value {
    let path = repo_file("deploy/grafana/im-dashboard.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not valid JSON: {err}", path.display()))
}

/// Returns every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn collect<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                collect(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    collect(&dashboard["panels"], &mut out);
    out
}

/// Returns the PromQL expressions of a panel's targets.
fn expressions(panel: &Value) -> Vec<&str> {
    panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|target| target["expr"].as_str())
        .collect()
}

/// Returns the metric names an expression selects: identifiers outside label matchers,
/// ranges and strings that are not functions, aggregations or keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' || c == '[' {
            i = skip_past(&chars, i, if c == '{' { '}' } else { ']' });
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '$' {
            // A Grafana variable such as $__rate_interval or ${datasource}.
            i = match chars.get(i + 1) {
                Some('{') => skip_past(&chars, i + 1, '}'),
                _ => skip_while(&chars, i + 1, |c| c.is_ascii_alphanumeric() || c == '_'),
            };
        } else if c.is_ascii_digit() || c == '.' {
            i = skip_while(&chars, i, |c| c.is_ascii_alphanumeric() || c == '.');
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let end = skip_while(&chars, i, |c| {
                c.is_ascii_alphanumeric() || c == '_' || c == ':'
            });
            let word: String = chars[i..end].iter().collect();
            let next = skip_while(&chars, end, char::is_whitespace);
            let called = chars.get(next) == Some(&'(');
            i = if LABEL_LIST_KEYWORDS.contains(&word.as_str()) && called {
                skip_past(&chars, next, ')')
            } else {
                end
            };
            let lower = word.to_ascii_lowercase();
            let keyword = KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
                || LABEL_LIST_KEYWORDS.contains(&word.as_str());
            if !called && !keyword {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn skip_while(chars: &[char], from: usize, keep: impl Fn(char) -> bool) -> usize {
    let mut i = from;
    while i < chars.len() && keep(chars[i]) {
        i += 1;
    }
    i
}

/// Returns the index after the `close` that ends the group opening at `from`, skipping strings.
fn skip_past(chars: &[char], from: usize, close: char) -> usize {
    let mut i = from + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Returns the index after the string literal opening at `from`.
fn skip_string(chars: &[char], from: usize) -> usize {
    let quote = chars[from];
    let mut i = from + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Returns the families of a scrape, from its `# TYPE` lines: name to kind.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Returns whether `name` is a family of the scrape, or a series of one of its histograms.
fn is_exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    if families.contains_key(name) {
        return true;
    }
    HISTOGRAM_SUFFIXES.iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|base| families.get(base))
            .is_some_and(|kind| kind == "histogram")
    })
}

async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("metrics port accepts");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("metrics within 5 s")
        .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 "), "{addr}: {head}");
    body.to_owned()
}

#[test]
fn metric_names_skip_functions_labels_and_ranges() {
    let expr = r#"histogram_quantile(0.99, sum by (method, le) (rate(a_seconds_bucket{method=~"Send|x"}[$__rate_interval]))) / on (instance) group_left b_total offset 5m > 0 and c * $scale"#;

    let names: Vec<String> = metric_names(expr).into_iter().collect();

    assert_eq!(names, ["a_seconds_bucket", "b_total", "c"]);
}

#[test]
fn histogram_series_count_as_their_family() {
    let families = families("# TYPE a_seconds histogram\n# TYPE b_total counter\n");

    assert!(is_exported("a_seconds_bucket", &families));
    assert!(is_exported("a_seconds_count", &families));
    assert!(is_exported("b_total", &families));
    assert!(!is_exported("b_total_count", &families));
    assert!(!is_exported("c_total", &families));
}

/// Returns the `label="value"` matchers of the selectors in `expr` with their metric name,
/// leaving out regular expressions, negations and values taken from dashboard variables.
fn equality_matchers(expr: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let name: String = rest[..open]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let close = rest[open..].find('}').map_or(rest.len(), |at| open + at);
        for matcher in rest[open + 1..close].split(',') {
            let Some((label, value)) = matcher.split_once('=') else {
                continue;
            };
            let label = label.trim();
            let value = value.trim();
            if label.ends_with('!') || value.starts_with('~') || value.contains('$') {
                continue;
            }
            found.push((
                name.clone(),
                label.to_owned(),
                value.trim_matches('"').to_owned(),
            ));
        }
        rest = &rest[(close + 1).min(rest.len())..];
    }
    found
}

#[test]
fn equality_matchers_skip_regexes_negations_and_variables() {
    let expr =
        r#"sum(rate(a_bucket{kind="login", code!="0", m=~"x|y", i="$node"}[5m])) / b{c="d"}"#;

    let matchers = equality_matchers(expr);

    assert_eq!(
        matchers,
        [
            ("a_bucket".into(), "kind".into(), "login".into()),
            ("b".into(), "c".into(), "d".into()),
        ]
    );
}

#[test]
fn quantiles_and_rates_have_matching_units() {
    let dashboard = load_dashboard();

    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("untitled");
        let exprs = expressions(panel);
        if exprs.is_empty() {
            continue;
        }
        let unit = panel["fieldConfig"]["defaults"]["unit"].as_str();
        let quantiles = exprs
            .iter()
            .filter(|expr| expr.contains("histogram_quantile("))
            .count();
        for expr in &exprs {
            if let Some(at) = expr.find("histogram_quantile(") {
                let grouping = expr[at..].split_once("by (").map(|(_, after)| after);
                let labels = grouping.and_then(|after| after.split_once(')'));
                assert!(
                    labels.is_some_and(|(labels, _)| labels.split(',').any(|l| l.trim() == "le")),
                    "{title}: histogram_quantile must group by le: {expr}"
                );
            }
        }
        if quantiles == exprs.len() {
            let seconds = exprs.iter().all(|expr| expr.contains("_seconds_bucket"));
            assert!(
                !seconds || unit == Some("s"),
                "{title}: quantiles of seconds need unit s, not {unit:?}"
            );
        } else if quantiles == 0
            && exprs
                .iter()
                .all(|expr| expr.contains("rate(") && !expr.contains(" / "))
        {
            assert!(
                matches!(unit, Some("ops" | "reqps")),
                "{title}: a rate needs a per-second unit (ops or reqps), not {unit:?}"
            );
        }
    }
}

#[test]
fn dashboard_uses_datasource_variable() {
    let dashboard = load_dashboard();

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let datasource = variables
        .iter()
        .find(|variable| variable["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(datasource["query"], "prometheus");
    let reference = format!("${{{}}}", datasource["name"].as_str().expect("a name"));
    for panel in panels(&dashboard) {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("untitled");
        assert_eq!(panel["datasource"]["uid"], reference.as_str(), "{title}");
        assert!(!expressions(panel).is_empty(), "{title} has no query");
    }
}

#[test]
fn prometheus_targets_are_default_metrics_addrs() {
    let path = repo_file("deploy/prometheus/prometheus.yml");
    let config = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));

    for addr in [
        im_engine::Config::default().metrics_addr,
        im_logic::Config::default().metrics_addr,
    ] {
        let target = format!("targets: [\"{addr}\"]");
        assert!(
            config.contains(&target),
            "{} lacks {target}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_metrics_are_exported() {
    let dashboard = load_dashboard();
    let stack = Stack::start().await;
    let engine_addr = stack.engine().metrics_addr().expect("engine metrics on");
    let logic_addr = stack
        .logic
        .as_ref()
        .and_then(|logic| logic.metrics_addr())
        .expect("logic metrics on");

    let text = scrape(engine_addr).await + &scrape(logic_addr).await;
    let exported = families(&text);
    stack.stop().await;

    let mut missing = Vec::new();
    let mut queried = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("untitled");
        for expr in expressions(panel) {
            for name in metric_names(expr) {
                queried += 1;
                if !is_exported(&name, &exported) {
                    missing.push(format!("{name} (panel \"{title}\")"));
                }
            }
            for (name, label, value) in equality_matchers(expr) {
                let series = format!("{name}{{");
                let matcher = format!("{label}=\"{value}\"");
                let found = text
                    .lines()
                    .any(|line| line.starts_with(&series) && line.contains(&matcher));
                if !found {
                    missing.push(format!("{name}{{{matcher}}} (panel \"{title}\")"));
                }
            }
        }
    }
    assert!(
        queried >= 13,
        "only {queried} metric uses found in the dashboard"
    );
    assert!(
        missing.is_empty(),
        "the dashboard queries series that neither /metrics exports: {}",
        missing.join(", ")
    );
}

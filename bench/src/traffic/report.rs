//! The result lines of a messaging run, printed on stdout.

use super::TrafficFigures;
use crate::report::{errors, quantiles, rate};

/// Quantiles printed for latencies.
const POINTS: [(&str, f64); 3] = [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)];

/// Receivers listed by name when they miss messages.
const INCOMPLETE_LISTED: usize = 5;

/// Prints the figures. `name_receiver` names receiving connection `i` in the lines about
/// receivers that missed messages.
pub(crate) fn print(figures: &TrafficFigures, name_receiver: &dyn Fn(usize) -> String) {
    println!("result");
    println!("  messages sent          {}", figures.sent);
    println!(
        "  replies                {} ({:.1} stored per second over {:.3} s)",
        figures.replies,
        rate(figures.replies, figures.sending_elapsed),
        figures.sending_elapsed.as_secs_f64()
    );
    println!(
        "  messages received      {} of {} expected, {} lost (drain {:.3} s)",
        figures.received,
        figures.expected,
        figures.lost(),
        figures.drain_elapsed.as_secs_f64()
    );
    println!(
        "  delivery latency ms    {}",
        quantiles(&figures.delivery_latency, &POINTS, true)
    );
    println!(
        "  reply latency ms       {}",
        quantiles(&figures.reply_latency, &POINTS, true)
    );
    println!("  received per receiver  {}", per_receiver_line(figures));
    for line in incomplete_lines(figures, name_receiver) {
        println!("    {line}");
    }
    println!("  errors                 {}", errors(&figures.errors));
}

fn per_receiver_line(figures: &TrafficFigures) -> String {
    let counts = &figures.per_receiver;
    let (Some(min), Some(max)) = (
        counts.iter().map(|(_, got)| got).min(),
        counts.iter().map(|(_, got)| got).max(),
    ) else {
        return "no receivers".into();
    };
    let complete = counts
        .iter()
        .filter(|(expected, got)| got == expected)
        .count();
    format!(
        "min {min}, max {max}, {complete} of {} received every message",
        counts.len()
    )
}

/// Lines naming the first receivers that missed messages, with how many.
fn incomplete_lines(
    figures: &TrafficFigures,
    name_receiver: &dyn Fn(usize) -> String,
) -> Vec<String> {
    let incomplete: Vec<(usize, &(u64, u64))> = figures
        .per_receiver
        .iter()
        .enumerate()
        .filter(|(_, (expected, got))| got != expected)
        .collect();
    let mut lines: Vec<String> = incomplete
        .iter()
        .take(INCOMPLETE_LISTED)
        .map(|(index, (expected, got))| format!("{}: {got} of {expected}", name_receiver(*index)))
        .collect();
    if incomplete.len() > INCOMPLETE_LISTED {
        lines.push(format!(
            "and {} more incomplete",
            incomplete.len() - INCOMPLETE_LISTED
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::{self, ErrorCounts};

    fn member(index: usize) -> String {
        format!("member {index}")
    }

    fn figures(per_receiver: Vec<(u64, u64)>) -> TrafficFigures {
        TrafficFigures {
            sent: 10,
            replies: 10,
            expected: per_receiver.iter().map(|(expected, _)| expected).sum(),
            received: per_receiver.iter().map(|(_, got)| got).sum(),
            per_receiver,
            delivery_latency: stats::latency_histogram(),
            reply_latency: stats::latency_histogram(),
            sending_elapsed: Duration::from_secs(1),
            drain_elapsed: Duration::ZERO,
            errors: ErrorCounts::default(),
        }
    }

    #[test]
    fn complete_run_passes() {
        let figures = figures(vec![(10, 10), (10, 10)]);

        assert!(figures.passed());
        assert_eq!(figures.lost(), 0);
        assert_eq!(
            per_receiver_line(&figures),
            "min 10, max 10, 2 of 2 received every message"
        );
        assert!(incomplete_lines(&figures, &member).is_empty());
    }

    #[test]
    fn lost_message_fails_and_is_listed() {
        let figures = figures(vec![(10, 10), (10, 9)]);

        assert!(!figures.passed());
        assert_eq!(figures.lost(), 1);
        assert_eq!(
            incomplete_lines(&figures, &member),
            vec!["member 1: 9 of 10"]
        );
    }

    #[test]
    fn error_fails_complete_run() {
        let mut figures = figures(vec![(10, 10)]);
        figures.errors.add("duplicate_message", 1);

        assert!(!figures.passed());
    }

    #[test]
    fn many_incomplete_are_summarised() {
        let figures = figures(vec![(3, 1); 8]);

        let lines = incomplete_lines(&figures, &member);

        assert_eq!(lines.len(), INCOMPLETE_LISTED + 1);
        assert_eq!(lines[0], "member 0: 1 of 3");
        assert_eq!(lines[INCOMPLETE_LISTED], "and 3 more incomplete");
    }
}

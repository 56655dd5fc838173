//! Readings of a run with slow readers: the engines' resident memory, the kernel's TCP buffer
//! memory and, when their endpoints are given, the engines' close counters. They are read
//! once per second from the start of the traffic to the end of the drain, and each reading
//! prints a progress line.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::engine_metrics::{self, CloseTimeline, MetricsEndpoint};
use crate::report::{self, MemorySample};
use crate::signin::EngineWatch;

/// Time between two readings.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// First, highest and last reading of one quantity in bytes. Each is `None` when no reading
/// of it succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Gauge {
    pub(crate) before: Option<u64>,
    pub(crate) peak: Option<u64>,
    pub(crate) end: Option<u64>,
}

impl Gauge {
    fn start(value: Option<u64>) -> Gauge {
        Gauge {
            before: value,
            peak: value,
            end: None,
        }
    }

    fn record(&mut self, value: Option<u64>) {
        if let Some(value) = value {
            self.peak = Some(self.peak.map_or(value, |peak| peak.max(value)));
        }
    }

    fn finish(&mut self, value: Option<u64>) {
        self.record(value);
        self.end = value;
    }

    /// Returns (peak - before) / `count` in bytes, or `None` when a reading is missing or
    /// `count` is 0.
    pub(crate) fn peak_growth_per(&self, count: u64) -> Option<i64> {
        report::bytes_per_connection(self.before?, self.peak?, count)
    }

    /// Returns `now` minus the first reading in bytes, when both exist.
    fn growth(&self, now: Option<u64>) -> Option<i64> {
        let delta = i128::from(now?) - i128::from(self.before?);
        i64::try_from(delta).ok()
    }
}

/// Engine and kernel memory over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemoryFigures {
    /// Resident memory of the engine processes together.
    pub(crate) engine_rss: Gauge,
    /// TCP buffer memory of the whole system (`mem` of the TCP line of /proc/net/sockstat).
    pub(crate) kernel_tcp: Gauge,
    /// Readings taken, the first and the last included.
    pub(crate) samples: u64,
}

impl MemoryFigures {
    fn start(first: MemorySample) -> MemoryFigures {
        MemoryFigures {
            engine_rss: Gauge::start(first.engine),
            kernel_tcp: Gauge::start(first.kernel.tcp_buffers),
            samples: 1,
        }
    }

    fn record(&mut self, sample: MemorySample) {
        self.engine_rss.record(sample.engine);
        self.kernel_tcp.record(sample.kernel.tcp_buffers);
        self.samples += 1;
    }

    fn finish(&mut self, last: MemorySample) {
        self.engine_rss.finish(last.engine);
        self.kernel_tcp.finish(last.kernel.tcp_buffers);
        self.samples += 1;
    }
}

/// Everything the sampler read over a run.
#[derive(Debug, Clone)]
pub(crate) struct Readings {
    pub(crate) memory: MemoryFigures,
    /// `None` without `--engine-metrics-url`.
    pub(crate) closes: Option<CloseTimeline>,
}

/// A task that reads memory and the engines' close counters once per [`SAMPLE_INTERVAL`]
/// until [`MemorySampler::finish`].
pub(crate) struct MemorySampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Readings>,
}

impl MemorySampler {
    /// Takes the first reading now and starts the task. `endpoints` are the engines'
    /// metrics endpoints; empty reads no close counters.
    pub(crate) async fn start(
        engine: EngineWatch,
        endpoints: Vec<MetricsEndpoint>,
    ) -> MemorySampler {
        let (stop, stopped) = oneshot::channel();
        let closes = match endpoints.as_slice() {
            [] => None,
            _ => Some(CloseTimeline::start(
                engine_metrics::read_closes(&endpoints).await,
            )),
        };
        let readings = Readings {
            memory: MemoryFigures::start(engine.sample()),
            closes,
        };
        let sampler = Sampler {
            engine,
            endpoints,
            readings,
        };
        let task = tokio::spawn(sampler.run_until(stopped));
        MemorySampler { stop, task }
    }

    /// Stops the task and takes the last reading. Returns `None` when the task failed.
    pub(crate) async fn finish(self) -> Option<Readings> {
        // The send fails only when the task has ended already, and joining reports why.
        let _ = self.stop.send(());
        match self.task.await {
            Ok(readings) => Some(readings),
            Err(error) => {
                tracing::warn!(%error, "memory sampler failed");
                None
            }
        }
    }
}

/// The state of the sampling task.
struct Sampler {
    engine: EngineWatch,
    endpoints: Vec<MetricsEndpoint>,
    readings: Readings,
}

impl Sampler {
    async fn run_until(mut self, mut stopped: oneshot::Receiver<()>) -> Readings {
        let started = Instant::now();
        let mut ticker = tokio::time::interval_at(started + SAMPLE_INTERVAL, SAMPLE_INTERVAL);
        loop {
            tokio::select! {
                // An error means the sampler handle was dropped, which also ends the readings.
                _ = &mut stopped => break,
                _ = ticker.tick() => {
                    let sample = self.engine.sample();
                    self.readings.memory.record(sample);
                    self.read_closes(started.elapsed()).await;
                    eprintln!("{}", progress_line(&self.readings, sample, started.elapsed()));
                }
            }
        }
        self.readings.memory.finish(self.engine.sample());
        self.read_closes(started.elapsed()).await;
        self.readings
    }

    async fn read_closes(&mut self, elapsed: Duration) {
        let Some(closes) = &mut self.readings.closes else {
            return;
        };
        closes.record(engine_metrics::read_closes(&self.endpoints).await, elapsed);
    }
}

/// Formats one progress line: both memory readings with their growth since the first, and
/// the engines' 4008 closes so far.
fn progress_line(readings: &Readings, sample: MemorySample, elapsed: Duration) -> String {
    let memory = &readings.memory;
    let engine = reading(sample.engine, memory.engine_rss.growth(sample.engine));
    let kernel = reading(
        sample.kernel.tcp_buffers,
        memory.kernel_tcp.growth(sample.kernel.tcp_buffers),
    );
    let mut line = format!(
        "memory: {:.0} s, engine RSS {engine}, kernel TCP buffers {kernel}",
        elapsed.as_secs_f64()
    );
    if let Some(closes) = &readings.closes {
        match closes.growth() {
            Some(growth) => line.push_str(&format!(", 4008 closes {}", growth.slow_consumer)),
            None => line.push_str(", 4008 closes not readable"),
        }
    }
    line
}

fn reading(bytes: Option<u64>, growth: Option<i64>) -> String {
    match (bytes, growth) {
        (Some(bytes), Some(growth)) => format!(
            "{} ({:+.1} MiB)",
            report::mebibytes(bytes),
            growth as f64 / (1024.0 * 1024.0)
        ),
        (Some(bytes), None) => report::mebibytes(bytes),
        (None, _) => "not readable".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KernelMemory;
    use crate::slow_readers::engine_metrics::EngineCloses;

    fn sample(engine: Option<u64>, tcp_buffers: Option<u64>) -> MemorySample {
        MemorySample {
            engine,
            kernel: KernelMemory {
                slab: None,
                tcp_buffers,
            },
        }
    }

    #[test]
    fn figures_keep_before_peak_and_end() {
        let mut figures = MemoryFigures::start(sample(Some(100), Some(10)));
        figures.record(sample(Some(400), Some(50)));
        figures.record(sample(Some(300), None));
        figures.finish(sample(Some(250), Some(20)));

        assert_eq!(figures.samples, 4);
        assert_eq!(figures.engine_rss.before, Some(100));
        assert_eq!(figures.engine_rss.peak, Some(400));
        assert_eq!(figures.engine_rss.end, Some(250));
        assert_eq!(figures.kernel_tcp.before, Some(10));
        assert_eq!(figures.kernel_tcp.peak, Some(50));
        assert_eq!(figures.kernel_tcp.end, Some(20));
    }

    #[test]
    fn peak_growth_is_divided_by_count() {
        let gauge = Gauge {
            before: Some(1_000),
            peak: Some(41_000),
            end: Some(2_000),
        };

        assert_eq!(gauge.peak_growth_per(4), Some(10_000));
        assert_eq!(gauge.peak_growth_per(0), None);
        assert_eq!(Gauge::default().peak_growth_per(4), None);
    }

    #[test]
    fn missing_first_reading_leaves_growth_unknown() {
        let mut figures = MemoryFigures::start(sample(None, Some(10)));
        figures.finish(sample(Some(500), Some(30)));

        assert_eq!(figures.engine_rss.before, None);
        assert_eq!(figures.engine_rss.peak, Some(500));
        assert_eq!(figures.engine_rss.peak_growth_per(1), None);
        assert_eq!(figures.kernel_tcp.peak_growth_per(2), Some(10));
    }

    #[test]
    fn progress_line_shows_growth() {
        let readings = Readings {
            memory: MemoryFigures::start(sample(Some(1024 * 1024), None)),
            closes: None,
        };

        let line = progress_line(
            &readings,
            sample(Some(3 * 1024 * 1024), None),
            Duration::from_secs(2),
        );

        assert_eq!(
            line,
            "memory: 2 s, engine RSS 3.0 MiB (+2.0 MiB), kernel TCP buffers not readable"
        );
    }

    #[test]
    fn progress_line_shows_closes() {
        let closes = |slow_consumer| {
            Ok(EngineCloses {
                slow_consumer,
                write_timeouts: 0,
            })
        };
        let mut timeline = CloseTimeline::start(closes(1));
        timeline.record(closes(4), Duration::from_secs(1));
        let readings = Readings {
            memory: MemoryFigures::start(sample(None, Some(4096))),
            closes: Some(timeline),
        };

        let line = progress_line(&readings, sample(None, Some(4096)), Duration::from_secs(1));

        assert_eq!(
            line,
            "memory: 1 s, engine RSS not readable, kernel TCP buffers 0.0 MiB (+0.0 MiB), \
             4008 closes 3"
        );
    }
}

//! Bounded soaks with real processes: connection churn, and devices sending and reconnecting
//! while the logic tier, Redis and PostgreSQL restart at random moments. Each runs for a short time in
//! the suite; `IM_SOAK_SECS` makes it longer, and `IM_SOAK_SEED` replays the chaos schedule
//! that a failed run printed. A third run floods a device that has stopped reading, for a fixed
//! 10 s.

mod procs;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use im_client::{Client, ConversationType};
use procs::device::sync_from_zero;
use procs::fleet::Fleet;
use procs::ledger::verify;
use procs::process::ProcStats;
use procs::servers::{scrape, Engine, EngineSettings};
use procs::system::{connect_options, open_users, Account, System};
use procs::{env_secs, run, seed, wait_for};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::block_in_place;
use tokio::time::Instant;

/// Clients of the churn soak, and their pause between two rounds.
const CHURN_CLIENTS: usize = 100;
const CHURN_PAUSE: Duration = Duration::from_millis(100);
/// Growth of the engine's resident memory that still counts as back to its level. Allocator
/// caches and shard buffers keep some memory after a burst; a leak of per-connection state
/// over thousands of connections passes this.
const RSS_SLACK_KIB: u64 = 32 * 1024;
/// Threads the engine may have above its level before: a runtime may keep a blocking-pool
/// thread for a while after use. A thread per connection would pass this by thousands.
const SPARE_THREADS: u64 = 2;

#[test]
fn churn_returns_engine_to_idle() {
    let secs = env_secs("IM_SOAK_SECS", 20);
    run("churn", secs + Duration::from_secs(120), churn(secs));
}

async fn churn(duration: Duration) {
    let settings = EngineSettings::default();
    let mut system = System::start("churn", 1, &settings);
    let url = system.ws_url(0);
    let accounts: Vec<Account> = open_users(&url, "ch", CHURN_CLIENTS, 1)
        .await
        .into_iter()
        .map(|mut devices| devices.remove(0))
        .collect();
    let accounts = Arc::new(accounts);

    // One round each first, so that the baseline includes the memory a first burst keeps.
    run_churn(&url, &accounts, Duration::ZERO).await;
    wait_idle(&system).await;
    let before = system.engines[0].stats();

    let started = Instant::now();
    let (cycles, failures) = run_churn(&url, &accounts, duration).await;
    let took = started.elapsed();
    wait_idle(&system).await;
    // Let closed connections' tasks and buffers go.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = system.engines[0].stats();

    println!(
        "churn: {CHURN_CLIENTS} clients, {cycles} connect-sign-in-send-close cycles in {took:?} \
         ({:.0}/s), {failures} failed; engine threads {} -> {}, RSS {} KiB -> {} KiB",
        cycles as f64 / took.as_secs_f64(),
        before.threads,
        after.threads,
        before.rss_kib,
        after.rss_kib
    );
    assert!(cycles > 0, "no cycle completed");
    // Each failure is printed; a loaded 2-core machine may time out a few sign-ins.
    assert!(
        failures * 100 <= cycles,
        "{failures} of {cycles} cycles failed"
    );
    check_back_to_level(before, after);

    let grace = Duration::from_millis(settings.shutdown_grace_ms);
    let (success, exit) = block_in_place(|| system.engines[0].terminate(grace * 4));
    assert!(
        success && exit < grace + Duration::from_secs(3),
        "shutdown took {exit:?}"
    );
}

fn check_back_to_level(before: ProcStats, after: ProcStats) {
    assert!(
        after.threads <= before.threads + SPARE_THREADS,
        "engine threads grew from {} to {}",
        before.threads,
        after.threads
    );
    assert!(
        after.rss_kib <= before.rss_kib + RSS_SLACK_KIB,
        "engine RSS grew from {} KiB to {} KiB",
        before.rss_kib,
        after.rss_kib
    );
}

/// Waits until the engine has no connection and no signed-in device, and no device is marked
/// online.
async fn wait_idle(system: &System) {
    let engine: &Engine = &system.engines[0];
    wait_for(
        "the engine's connection count returns to 0",
        Duration::from_secs(15),
        || async { engine.connections().await == 0 },
    )
    .await;
    wait_for(
        "the engine's device map empties",
        Duration::from_secs(15),
        || async { engine.signed_in_devices().await == 0 },
    )
    .await;
    wait_for(
        "the online status empties",
        Duration::from_secs(15),
        || async { system.online_users().await == 0 },
    )
    .await;
}

/// Runs every client's loop of connect, sign in, send one message, close, pause, until
/// `duration` has passed (at least one cycle each). Every other round a client drops its
/// connection without the close handshake, as a client that is killed does. Returns cycles and
/// failed cycles.
async fn run_churn(url: &str, accounts: &Arc<Vec<Account>>, duration: Duration) -> (u64, u64) {
    let end = Instant::now() + duration;
    let cycles = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..accounts.len())
        .map(|index| {
            let (url, accounts) = (url.to_owned(), accounts.clone());
            let (cycles, failures) = (cycles.clone(), failures.clone());
            tokio::spawn(async move {
                let mut round = 0u64;
                loop {
                    match churn_cycle(&url, &accounts, index, round).await {
                        Ok(()) => cycles.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            println!("churn: client {index} round {round}: {error}");
                            failures.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    round += 1;
                    if Instant::now() >= end {
                        return;
                    }
                    tokio::time::sleep(CHURN_PAUSE).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("churn task");
    }
    (
        cycles.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    )
}

async fn churn_cycle(
    url: &str,
    accounts: &[Account],
    index: usize,
    round: u64,
) -> Result<(), String> {
    let account = &accounts[index];
    let receiver = accounts[(index + 1) % accounts.len()].user_id();
    let client = Client::connect(url, &connect_options())
        .await
        .map_err(|error| format!("connect: {error}"))?;
    client
        .sign_in(account.user_id(), account.device_id(), &account.login.token)
        .await
        .map_err(|error| format!("sign-in: {error}"))?;
    client
        .send(
            ConversationType::User,
            receiver,
            format!("churn {round}"),
            "text/plain",
            &format!("churn-{index}-{round}"),
        )
        .await
        .map_err(|error| format!("send: {error}"))?;
    if round % 2 == 1 {
        // The socket closes without a close frame.
        drop(client);
        return Ok(());
    }
    client
        .close()
        .await
        .map_err(|error| format!("close: {error}"))
}

/// Users and devices of the chaos soak.
const CHAOS_USERS: usize = 6;
const CHAOS_DEVICES_EACH: usize = 2;

#[test]
fn chaos_soak_loses_and_duplicates_nothing() {
    let secs = env_secs("IM_SOAK_SECS", 60);
    let seed = seed("chaos soak");
    run(
        "chaos soak",
        secs + Duration::from_secs(110),
        chaos(secs, seed),
    );
}

async fn chaos(duration: Duration, seed: u64) {
    let mut system = System::start("chaos", 1, &EngineSettings::default());
    let url = system.ws_url(0);
    let users = open_users(&url, "cs", CHAOS_USERS, CHAOS_DEVICES_EACH).await;
    let fleet = Fleet::start(users, |_| vec![url.clone()]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..fleet.devices.len())
        .map(|index| {
            let rng = StdRng::seed_from_u64(seed.wrapping_add(index as u64 + 1));
            tokio::spawn(chaos_device(fleet.clone(), index, rng, stop.clone()))
        })
        .collect();
    let events = run_faults(&mut system, StdRng::seed_from_u64(seed), duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut reconnects = 0;
    for sender in senders {
        reconnects += sender.await.expect("sender task");
    }

    let reports = fleet.finish(Duration::from_secs(60)).await;
    let lost_connections: u32 = reports.iter().map(|r| r.counters.lost_connections).sum();
    let relogins: usize = reports.iter().map(|r| r.counters.relogins.len()).sum();
    println!("chaos soak: seed {seed}; faults {events:?}");
    println!(
        "chaos soak: attempts by outcome {:?}; planned reconnects {reconnects}, lost \
         connections {lost_connections}, sign-ins that needed LOGIN {relogins}",
        fleet.ledger.tally()
    );
    let verdict = verify(&fleet.ledger, &reports);
    verdict.assert_clean(&format!("chaos soak (seed {seed})"));
    assert!(verdict.counts.accepted > 0, "no message was accepted");
}

/// Runs one device: pause, then mostly send to a random other user (retrying a failed
/// message up to three times with its own id), sometimes reconnect. Returns its reconnects.
async fn chaos_device(
    fleet: Arc<Fleet>,
    index: usize,
    mut rng: StdRng,
    stop: Arc<AtomicBool>,
) -> u32 {
    let mut reconnects = 0;
    let device = fleet.devices[index].clone();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
        if rng.random_bool(0.05) {
            // Fails while the logic tier or Redis is down; the device keeps trying by itself.
            let _ = device.reconnect(Duration::from_secs(5)).await;
            reconnects += 1;
            continue;
        }
        let receiver = (device.user + rng.random_range(1..fleet.users())) % fleet.users();
        let (id, mut result) = fleet.send(index, receiver).await;
        for _ in 0..3 {
            if result.outcome.reply().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            result = fleet.send_as(index, receiver, &id).await;
        }
    }
    reconnects
}

/// Restarts the logic tier (SIGTERM or SIGKILL), Redis (empty) or PostgreSQL (after an
/// immediate shutdown) at random moments until `duration` has passed, and leaves everything
/// running. Returns what it did, and when.
async fn run_faults(system: &mut System, mut rng: StdRng, duration: Duration) -> Vec<String> {
    let start = Instant::now();
    let end = start + duration;
    let mut events = Vec::new();
    loop {
        let pause = Duration::from_millis(rng.random_range(3_000..8_000));
        let down = Duration::from_millis(rng.random_range(300..3_000));
        if Instant::now() + pause + down >= end {
            break;
        }
        tokio::time::sleep(pause).await;
        let at = start.elapsed().as_secs_f32();
        let what = match rng.random_range(0..4) {
            0 => {
                block_in_place(|| system.logic.stop());
                tokio::time::sleep(down).await;
                block_in_place(|| system.logic.resume());
                "logic SIGTERM"
            }
            1 => {
                system.logic.kill();
                tokio::time::sleep(down).await;
                block_in_place(|| system.logic.resume());
                "logic SIGKILL"
            }
            2 => {
                system.redis.kill();
                tokio::time::sleep(down).await;
                block_in_place(|| system.redis.resume());
                "Redis restart empty"
            }
            _ => {
                // Immediate shutdown: no checkpoint, so the restart replays the WAL.
                block_in_place(|| system.pg.crash());
                tokio::time::sleep(down).await;
                block_in_place(|| system.pg.resume());
                "PostgreSQL crash"
            }
        };
        events.push(format!("{at:.1}s {what} for {down:?}"));
    }
    tokio::time::sleep_until(end).await;
    events
}

/// Devices that flood the slow reader, the messages each sends a second, and their size:
/// 500 messages and about 4 MB a second in all, within each sender's default rate limits
/// (50 packets and 256 KiB a second).
const FLOOD_SENDERS: usize = 20;
const FLOOD_RATE: u64 = 25;
const FLOOD_CONTENT_BYTES: usize = 8 * 1024;
/// How long the flood lasts.
const FLOOD_FOR: Duration = Duration::from_secs(10);
/// Pairs of other devices that message each other meanwhile, each pair every 100 ms.
const BYSTANDER_PAIRS: usize = 10;
const BYSTANDER_EVERY: Duration = Duration::from_millis(100);
/// Growth of the engine's resident memory during the flood that still counts as flat. The slow
/// reader's queue is capped at `max_outbound_bytes` (1 MiB by default), and allocator caches
/// keep some memory after a burst.
const FLOOD_RSS_SLACK_KIB: u64 = 8 * 1024;

#[test]
fn slow_reader_leaves_engine_flat() {
    run(
        "slow reader",
        FLOOD_FOR + Duration::from_secs(120),
        slow_reader(),
    );
}

/// Floods a device that has stopped reading. The engine must close it with 4008 once its queue
/// passes the cap, and count the close. The engine's memory stays flat, other devices keep
/// getting their messages, each within 10 s, and the slow device gets every message by SYNC
/// after it reconnects.
async fn slow_reader() {
    let system = System::start("slow-reader", 1, &EngineSettings::default());
    let url = system.ws_url(0);
    let accounts: Vec<Account> = open_users(&url, "sr", 1 + FLOOD_SENDERS + 2 * BYSTANDER_PAIRS, 1)
        .await
        .into_iter()
        .map(|mut devices| devices.remove(0))
        .collect();
    let (slow_account, others) = accounts.split_first().expect("accounts");
    let (sender_accounts, bystander_accounts) = others.split_at(FLOOD_SENDERS);
    let mut slow = signed_in(&url, slow_account).await;
    let mut senders = Vec::new();
    for account in sender_accounts {
        senders.push(signed_in(&url, account).await);
    }
    let mut bystanders = Vec::new();
    for pair in bystander_accounts.chunks(2) {
        let sender = signed_in(&url, &pair[0]).await;
        let receiver = signed_in(&url, &pair[1]).await;
        bystanders.push((sender, receiver, pair[1].user_id()));
    }
    let bystanders = Arc::new(bystanders);

    let engine = &system.engines[0];
    let rss_before = engine.stats().rss_kib;

    slow.pause_reading();
    let flood_end = Instant::now() + FLOOD_FOR;
    let floods: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(index, sender)| {
            let receiver = slow_account.user_id();
            tokio::spawn(async move {
                let content = vec![b'x'; FLOOD_CONTENT_BYTES];
                let mut ticker =
                    tokio::time::interval(Duration::from_micros(1_000_000 / FLOOD_RATE));
                let mut accepted = 0u64;
                let mut round = 0u64;
                while Instant::now() < flood_end {
                    ticker.tick().await;
                    let result = sender
                        .send(
                            ConversationType::User,
                            receiver,
                            content.clone(),
                            "application/octet-stream",
                            &format!("flood-{index}-{round}"),
                        )
                        .await;
                    round += 1;
                    match result {
                        Ok(_) => accepted += 1,
                        Err(error) => {
                            println!("slow reader: sender {index} round {round}: {error}")
                        }
                    }
                }
                accepted
            })
        })
        .collect();
    let sampler = async {
        let mut rss_max = 0;
        while Instant::now() < flood_end {
            rss_max = rss_max.max(engine.stats().rss_kib);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        rss_max
    };
    // Once the engine has closed the slow reader, the device reads again, as an app back in
    // the foreground does. It gets the pushes that reached its socket, then the close frame.
    // Waiting for the end of the flood could miss that frame, because the engine drops a
    // connection without one when its socket stays full for write_timeout_ms (10 s).
    let slow_reader_closed = async {
        wait_for("the engine closes the slow reader", FLOOD_FOR, || async {
            let metrics = scrape(engine.metrics_addr).await;
            metric_value(
                &metrics,
                "im_engine_limits_hit_total{kind=\"outbound_queue\"}",
            ) > 0
        })
        .await;
        slow.resume_reading();
        let mut pushes = 0u64;
        while slow.next_push().await.is_some() {
            pushes += 1;
        }
        let (code, _) = slow
            .wait_closed(Duration::from_secs(5))
            .await
            .expect("the slow reader is closed");
        (pushes, code)
    };
    let busy = bystander_latencies(bystanders.clone(), FLOOD_FOR, "b");
    let (rss_max, busy, (pushed_before_close, code)) =
        tokio::join!(sampler, busy, slow_reader_closed);
    let mut accepted = 0;
    for flood in floods {
        accepted += flood.await.expect("flood task");
    }

    let metrics = scrape(engine.metrics_addr).await;
    let slow_closes = metric_value(&metrics, "im_engine_closes_total{code=\"4008\"}");
    let queue_limits = metric_value(
        &metrics,
        "im_engine_limits_hit_total{kind=\"outbound_queue\"}",
    );
    println!(
        "slow reader: {accepted} messages of {FLOOD_CONTENT_BYTES} bytes accepted in \
         {FLOOD_FOR:?}, {pushed_before_close} pushed before the close; engine RSS \
         {rss_before} KiB before, at most {rss_max} KiB during"
    );

    assert_eq!(code, 4008, "the slow reader's close code");
    assert_eq!(slow_closes, 1);
    assert_eq!(queue_limits, 1);
    assert!(
        rss_max <= rss_before + FLOOD_RSS_SLACK_KIB,
        "engine RSS grew from {rss_before} KiB to {rss_max} KiB"
    );
    assert!(!busy.is_empty(), "no bystander message went through");

    let again = signed_in(&url, slow_account).await;
    let messages = sync_from_zero(&again).await.expect("sync");
    let seqs: Vec<u64> = messages.iter().map(|message| message.seq).collect();
    assert_eq!(seqs, (1..=accepted).collect::<Vec<_>>());
    assert!(messages
        .iter()
        .all(|message| message.content.len() == FLOOD_CONTENT_BYTES));
    again.close().await.expect("close");
}

/// Connects to `url` and signs `account`'s device in.
async fn signed_in(url: &str, account: &Account) -> Client {
    let client = procs::system::connect(url).await;
    client
        .sign_in(account.user_id(), account.device_id(), &account.login.token)
        .await
        .unwrap_or_else(|error| panic!("sign-in of device {}: {error}", account.device_id()));
    client
}

/// Has each pair send a direct message every [`BYSTANDER_EVERY`] for `duration`, and returns
/// the time from each SEND to its push.
async fn bystander_latencies(
    pairs: Arc<Vec<(Client, Client, u64)>>,
    duration: Duration,
    prefix: &str,
) -> Vec<Duration> {
    let end = Instant::now() + duration;
    let tasks: Vec<_> = (0..pairs.len())
        .map(|index| {
            let pairs = pairs.clone();
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                let (sender, receiver, receiver_id) = &pairs[index];
                let mut ticker = tokio::time::interval(BYSTANDER_EVERY);
                let mut latencies = Vec::new();
                let mut round = 0u64;
                while Instant::now() < end {
                    ticker.tick().await;
                    let started = Instant::now();
                    sender
                        .send(
                            ConversationType::User,
                            *receiver_id,
                            format!("ping {round}"),
                            "text/plain",
                            &format!("ping-{prefix}-{index}-{round}"),
                        )
                        .await
                        .expect("bystander send");
                    let push = tokio::time::timeout(Duration::from_secs(10), receiver.next_push())
                        .await
                        .expect("the bystander's push within 10 s")
                        .expect("the bystander's connection is open");
                    latencies.push(started.elapsed());
                    assert_eq!(push.r#type, im_client::PacketType::Message as i32);
                    round += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("bystander task"));
    }
    latencies
}

/// Returns the value of `series` in the Prometheus text `metrics`, 0 when it is missing.
fn metric_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

//! Faults with real processes. Each test runs its own PostgreSQL, Redis, `im-logic` and
//! `im-engine` as child processes, and stops or kills one of them while devices are connected
//! and sending. It then checks what the devices saw, and that no accepted message was lost or
//! stored twice. The tests run one at a time (see `procs::serial`).

mod procs;

use std::collections::BTreeMap;
use std::time::Duration;

use im_client::{Client, ClientError, ConversationType, ErrorCode};
use procs::device::{sync_from_zero, SendOutcome, SendResult};
use procs::fleet::Fleet;
use procs::ledger::verify;
use procs::servers::{scrape, EngineSettings};
use procs::system::{connect, open_users, test_device, Account, System};
use procs::{run, wait_for, PASSWORD};
use tokio::task::block_in_place;
use tokio::time::Instant;

/// Margin over a server deadline for the reply to reach the device on a busy machine.
const REPLY_MARGIN: Duration = Duration::from_millis(1_500);

fn retry_code(result: &SendResult) -> bool {
    matches!(
        result.outcome,
        SendOutcome::Rejected(ErrorCode::Unavailable | ErrorCode::Timeout)
    )
}

#[test]
fn logic_restart_fails_fast_loses_nothing() {
    run("logic restart", Duration::from_secs(150), logic_restart());
}

async fn logic_restart() {
    let settings = EngineSettings::default();
    let deadline = Duration::from_millis(settings.logic_call_timeout_ms) + REPLY_MARGIN;
    let mut system = System::start("logic-restart", 1, &settings);
    let engine_pid = system.engines[0].pid();
    let url = system.ws_url(0);
    let users = open_users(&url, "lr", 6, 1).await;
    let fleet = Fleet::start(users, |_| vec![url.clone()]).await;

    for (id, result) in fleet.round().await {
        assert!(
            result.outcome.reply().is_some(),
            "{id} before the outage: {result:?}"
        );
    }

    block_in_place(|| system.logic.stop());
    let outage_end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < outage_end {
        for (id, result) in fleet.round().await {
            assert!(retry_code(&result), "{id} during the outage: {result:?}");
            assert!(
                result.elapsed < deadline,
                "{id} failed after {:?}",
                result.elapsed
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    block_in_place(|| system.logic.resume());
    // The engine's channel to the logic tier reconnects by itself: new sends succeed without
    // restarting the engine.
    let recovered = Instant::now() + Duration::from_secs(15);
    loop {
        let results = fleet.round().await;
        if results
            .iter()
            .all(|(_, result)| result.outcome.reply().is_some())
        {
            break;
        }
        assert!(
            Instant::now() < recovered,
            "sends still fail 15 s after the logic tier came back: {results:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet.retry_until_accepted(Duration::from_secs(20)).await;
    for _ in 0..2 {
        fleet.round().await;
    }

    assert!(system.engines[0].is_running(), "the engine exited");
    assert_eq!(system.engines[0].pid(), engine_pid);
    let reports = fleet.finish(Duration::from_secs(30)).await;
    for report in &reports {
        assert_eq!(
            report.counters.lost_connections, 0,
            "user {} lost its connection during the logic outage: {:?}",
            report.user, report.counters
        );
    }
    println!(
        "logic restart: attempts by outcome {:?}",
        fleet.ledger.tally()
    );
    verify(&fleet.ledger, &reports).assert_clean("logic restart");
}

#[test]
fn hung_logic_times_out_sends_stores_once() {
    run("hung logic", Duration::from_secs(120), hung_logic());
}

/// The logic tier stops replying but keeps its sockets open (SIGSTOP): sends fail with
/// TIMEOUT at the engine's deadline, yet the requests wait in the logic tier's socket and are
/// stored once it continues. Their retries must return the first reply and store nothing.
async fn hung_logic() {
    let settings = EngineSettings::default();
    let deadline = Duration::from_millis(settings.logic_call_timeout_ms) + REPLY_MARGIN;
    let system = System::start("hung-logic", 1, &settings);
    let url = system.ws_url(0);
    let users = open_users(&url, "hl", 6, 1).await;
    let fleet = Fleet::start(users, |_| vec![url.clone()]).await;
    fleet.round().await;

    system.logic.pause(true);
    let timed_out = fleet.round().await;
    system.logic.pause(false);
    for (id, result) in &timed_out {
        assert!(
            matches!(result.outcome, SendOutcome::Rejected(ErrorCode::Timeout)),
            "{id} while the logic tier hung: {result:?}"
        );
        assert!(
            result.elapsed < deadline,
            "{id} failed after {:?}",
            result.elapsed
        );
    }

    fleet.retry_until_accepted(Duration::from_secs(20)).await;
    fleet.round().await;
    let reports = fleet.finish(Duration::from_secs(30)).await;
    for report in &reports {
        assert_eq!(report.counters.lost_connections, 0, "{:?}", report.counters);
    }
    println!("hung logic: attempts by outcome {:?}", fleet.ledger.tally());
    verify(&fleet.ledger, &reports).assert_clean("hung logic");
}

/// Devices, messages a second, and the Redis outage of the Redis restart test.
const REDIS_USERS: usize = 25;
const REDIS_DEVICES_EACH: usize = 2;
const REDIS_RATE: u64 = 100;
const REDIS_DOWN_AT: Duration = Duration::from_secs(3);
const REDIS_DOWN_FOR: Duration = Duration::from_secs(5);
const REDIS_LOAD_FOR: Duration = Duration::from_secs(12);

#[test]
fn redis_restart_under_load_loses_nothing() {
    run("Redis restart", Duration::from_secs(150), redis_restart());
}

async fn redis_restart() {
    let mut system = System::start("redis-restart", 1, &EngineSettings::default());
    let url = system.ws_url(0);
    let users = open_users(&url, "rr", REDIS_USERS, REDIS_DEVICES_EACH).await;
    let fleet = Fleet::start(users, |_| vec![url.clone()]).await;

    let load = tokio::spawn(steady_load(fleet.clone(), REDIS_RATE, REDIS_LOAD_FOR, 7));
    tokio::time::sleep(REDIS_DOWN_AT).await;
    system.redis.kill();
    tokio::time::sleep(REDIS_DOWN_FOR).await;
    block_in_place(|| system.redis.resume());

    // The first device of every user reconnects: its token was in Redis, so it must log in
    // again, and LOGIN must work.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reconnecting: Vec<_> = fleet.devices.iter().step_by(REDIS_DEVICES_EACH).collect();
    let results = futures::future::join_all(
        reconnecting
            .iter()
            .map(|device| device.reconnect(Duration::from_secs(20))),
    )
    .await;
    for (device, result) in reconnecting.iter().zip(results) {
        if let Err(error) = result {
            panic!(
                "device {} cannot sign in after Redis returned: {error}",
                device.device_id
            );
        }
    }
    // Every device is marked online again: the reconnected ones wrote their status at
    // sign-in, and the engine reported the others after its next lease renewal.
    let devices = fleet.devices.len();
    wait_for(
        "every connected device is marked online again",
        Duration::from_secs(15),
        || async { system.online_devices().await == devices },
    )
    .await;
    let online_devices = system.online_devices().await;

    let results = load.await.expect("load task");
    let bad: Vec<_> = results
        .iter()
        .filter(|result| result.outcome.reply().is_none() && !retry_code(result))
        .collect();
    assert!(bad.is_empty(), "sends failed without a retry code: {bad:?}");
    fleet.retry_until_accepted(Duration::from_secs(20)).await;

    let reports = fleet.finish(Duration::from_secs(60)).await;
    let relogins: BTreeMap<String, usize> = reports
        .iter()
        .flat_map(|report| report.counters.relogins.iter())
        .fold(BTreeMap::new(), |mut tally, code| {
            *tally.entry(format!("{code:?}")).or_insert(0) += 1;
            tally
        });
    for report in &reports {
        assert_eq!(
            report.counters.lost_connections, 0,
            "user {} lost its connection while Redis was down: {:?}",
            report.user, report.counters
        );
    }
    println!(
        "Redis restart: attempts by outcome {:?}; sign-ins that needed LOGIN because the \
         token was gone, by code: {relogins:?}; devices in the online status after the \
         reconnects: {online_devices} of {} connected",
        fleet.ledger.tally(),
        fleet.devices.len()
    );
    verify(&fleet.ledger, &reports).assert_clean("Redis restart");
}

/// Sends `rate` messages a second for `duration`, each from a random device to a random
/// other user, and returns every outcome.
async fn steady_load(
    fleet: std::sync::Arc<Fleet>,
    rate: u64,
    duration: Duration,
    seed: u64,
) -> Vec<SendResult> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let end = Instant::now() + duration;
    let mut sends = Vec::new();
    while Instant::now() < end {
        ticker.tick().await;
        let index = rng.random_range(0..fleet.devices.len());
        let sender = fleet.devices[index].user;
        let receiver = (sender + rng.random_range(1..fleet.users())) % fleet.users();
        let fleet = fleet.clone();
        sends.push(tokio::spawn(
            async move { fleet.send(index, receiver).await.1 },
        ));
    }
    let mut results = Vec::with_capacity(sends.len());
    for send in sends {
        results.push(send.await.expect("send task"));
    }
    results
}

#[test]
fn postgres_restart_stores_each_send_once() {
    run(
        "PostgreSQL restart",
        Duration::from_secs(150),
        postgres_restart(),
    );
}

async fn postgres_restart() {
    let mut system = System::start("pg-restart", 1, &EngineSettings::default());
    let url = system.ws_url(0);
    let users = open_users(&url, "pr", 6, 1).await;
    let fleet = Fleet::start(users, |_| vec![url.clone()]).await;

    let stop_at = Instant::now() + Duration::from_secs(9);
    let senders: Vec<_> = (0..fleet.devices.len())
        .map(|index| tokio::spawn(send_until(fleet.clone(), index, stop_at)))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    block_in_place(|| system.pg.crash());
    tokio::time::sleep(Duration::from_secs(2)).await;
    block_in_place(|| system.pg.resume());
    for sender in senders {
        sender.await.expect("sender task");
    }
    fleet.retry_until_accepted(Duration::from_secs(30)).await;

    let tally = fleet.ledger.tally();
    println!("PostgreSQL restart: attempts by outcome {tally:?}");
    let failed: usize = tally
        .iter()
        .filter(|(label, _)| label.as_str() != "accepted")
        .map(|(_, count)| count)
        .sum();
    assert!(
        failed > 0,
        "no SEND failed: the outage did not hit any send"
    );
    for label in tally.keys() {
        assert!(
            ["accepted", "Unavailable", "Timeout"].contains(&label.as_str()),
            "a SEND ended as {label}: expected a reply or a retry code"
        );
    }
    let reports = fleet.finish(Duration::from_secs(30)).await;
    for report in &reports {
        assert_eq!(report.counters.lost_connections, 0, "{:?}", report.counters);
    }
    verify(&fleet.ledger, &reports).assert_clean("PostgreSQL restart");
}

/// Device `index` sends to the next user until `stop_at`, retrying each failed message with
/// its own `client_msg_id` before the next one.
async fn send_until(fleet: std::sync::Arc<Fleet>, index: usize, stop_at: Instant) {
    let receiver = (fleet.devices[index].user + 1) % fleet.users();
    while Instant::now() < stop_at {
        let (id, mut result) = fleet.send(index, receiver).await;
        while result.outcome.reply().is_none() && Instant::now() < stop_at {
            tokio::time::sleep(Duration::from_millis(200)).await;
            result = fleet.send_as(index, receiver, &id).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn killed_engine_devices_move_and_sync() {
    run("engine kill", Duration::from_secs(150), engine_kill());
}

async fn engine_kill() {
    let mut system = System::start("engine-kill", 2, &EngineSettings::default());
    let doomed = system.ws_url(0);
    let survivor = system.ws_url(1);
    // Users 0-5 start on the node that dies and fall over to the other; users 6-11 stay on it.
    let users = open_users(&survivor, "ek", 12, 1).await;
    let fleet = Fleet::start(users, |user| {
        if user < 6 {
            vec![doomed.clone(), survivor.clone()]
        } else {
            vec![survivor.clone()]
        }
    })
    .await;
    for (id, result) in fleet.round().await {
        assert!(
            result.outcome.reply().is_some(),
            "{id} before the kill: {result:?}"
        );
    }

    system.engines[0].kill();
    // Messages to the users of the dead node while they reconnect.
    for _ in 0..5 {
        let sends = (6..12).map(|index| fleet.send(index, index - 6));
        futures::future::join_all(sends).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for device in &fleet.devices[..6] {
        device
            .online(Duration::from_secs(20))
            .await
            .unwrap_or_else(|error| {
                panic!("device {} did not reconnect: {error}", device.device_id)
            });
    }
    fleet.round().await;
    fleet.retry_until_accepted(Duration::from_secs(20)).await;

    let reports = fleet.finish(Duration::from_secs(30)).await;
    for report in &reports[..6] {
        assert!(
            report.counters.lost_connections >= 1 && report.counters.sign_ins >= 2,
            "user {} did not move to the other node: {:?}",
            report.user,
            report.counters
        );
    }
    for report in &reports[6..] {
        assert_eq!(report.counters.lost_connections, 0, "{:?}", report.counters);
    }
    verify(&fleet.ledger, &reports).assert_clean("engine kill");
}

/// Devices on the node that the lease test kills, and the lease settings of its nodes: short,
/// so that the test waits little.
const KILLED_NODE_DEVICES: usize = 20;
const SHORT_LEASE_INTERVAL_MS: u64 = 300;
const SHORT_LEASE_TTL_MS: u64 = 1_500;
/// The logic tier's reaper runs every second, and one more second covers a loaded machine.
const REAP_MARGIN: Duration = Duration::from_secs(2);

#[test]
fn killed_engine_statuses_lapse_with_lease() {
    run(
        "engine kill, devices stay away",
        Duration::from_secs(90),
        killed_engine_lease(),
    );
}

/// Kills a node with SIGKILL, so that it sends no Offline for its devices. Their online status
/// must go when the node's lease lapses, without the devices signing in anywhere, and the logic
/// tier must stop pushing to the node. The messages sent meanwhile reach each device by SYNC
/// once it signs in on the other node.
async fn killed_engine_lease() {
    let settings = EngineSettings {
        lease_interval_ms: SHORT_LEASE_INTERVAL_MS,
        lease_ttl_ms: SHORT_LEASE_TTL_MS,
        ..EngineSettings::default()
    };
    let mut system = System::start("engine-lease", 2, &settings);
    let (doomed_url, survivor_url) = (system.ws_url(0), system.ws_url(1));
    let doomed_node = system.engines[0].grpc_addr.to_string();
    let survivor_node = system.engines[1].grpc_addr.to_string();
    let mut users = open_users(&survivor_url, "kl", KILLED_NODE_DEVICES + 1, 1).await;
    let sender_account = users.remove(0).remove(0);
    let recipients: Vec<_> = users
        .into_iter()
        .map(|mut devices| devices.remove(0))
        .collect();
    let sender = connect(&survivor_url).await;
    sender
        .sign_in(
            sender_account.user_id(),
            sender_account.device_id(),
            &sender_account.login.token,
        )
        .await
        .expect("the sender signs in on the surviving node");
    let mut on_doomed = Vec::new();
    for recipient in &recipients {
        let client = connect(&doomed_url).await;
        client
            .sign_in(
                recipient.user_id(),
                recipient.device_id(),
                &recipient.login.token,
            )
            .await
            .expect("sign-in on the node that dies");
        let status = system.online_status(recipient.user_id()).await;
        let value = &status[&recipient.device_id().to_string()];
        assert!(value.starts_with(&format!("{doomed_node}|")), "{value}");
        on_doomed.push(client);
    }
    send_to_each(&sender, &recipients, "before").await;
    for client in &on_doomed {
        let push = tokio::time::timeout(Duration::from_secs(5), client.next_push())
            .await
            .expect("a push from the live node");
        assert!(push.is_some(), "the connection closed before the push");
    }

    system.engines[0].kill();
    let killed = Instant::now();
    let reap_deadline = Duration::from_millis(SHORT_LEASE_TTL_MS) + REAP_MARGIN;
    let reaped = async {
        let wait = reap_deadline + Duration::from_secs(3);
        let end = Instant::now() + wait;
        loop {
            if statuses_gone(&system, &recipients, &doomed_node).await {
                return killed.elapsed();
            }
            assert!(
                Instant::now() < end,
                "statuses still name the dead node after {wait:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Sent while the lease still runs: the logic tier still pushes to the dead node, and each
    // send must be stored all the same.
    let (took, ()) = tokio::join!(reaped, send_to_each(&sender, &recipients, "lapsing"));
    assert!(
        took <= reap_deadline,
        "statuses removed {took:?} after the kill, more than {reap_deadline:?}"
    );

    // Deliver calls to the dead node that were queued before the reap may still fail within
    // the logic tier's engine_call_timeout_ms (1 s). No call may follow them.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let failed_before = failed_deliver_calls(&system).await;
    send_to_each(&sender, &recipients, "after").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        failed_deliver_calls(&system).await,
        failed_before,
        "the logic tier still pushes to the dead node"
    );

    for recipient in &recipients {
        let moved = connect(&survivor_url).await;
        moved
            .sign_in(
                recipient.user_id(),
                recipient.device_id(),
                &recipient.login.token,
            )
            .await
            .expect("sign-in on the surviving node");
        let messages = sync_from_zero(&moved).await.expect("sync");
        let seqs: Vec<u64> = messages.iter().map(|message| message.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3], "user {}", recipient.user_id());
        let texts: Vec<&[u8]> = messages
            .iter()
            .map(|message| message.content.as_ref())
            .collect();
        assert_eq!(texts, [b"before".as_slice(), b"lapsing", b"after"]);
        let status = system.online_status(recipient.user_id()).await;
        let value = &status[&recipient.device_id().to_string()];
        assert!(value.starts_with(&format!("{survivor_node}|")), "{value}");
        close(moved).await;
    }
    close(sender).await;
}

/// Sends `text` to each of `recipients`, one after another; panics when a send fails.
async fn send_to_each(sender: &Client, recipients: &[Account], text: &str) {
    for recipient in recipients {
        sender
            .send(
                ConversationType::User,
                recipient.user_id(),
                text.to_owned(),
                "text/plain",
                &format!("{text}-{}", recipient.user_id()),
            )
            .await
            .unwrap_or_else(|error| panic!("send {text} to {}: {error}", recipient.user_id()));
    }
}

/// Tells whether no recipient's online status names `node`.
async fn statuses_gone(system: &System, recipients: &[Account], node: &str) -> bool {
    for recipient in recipients {
        let status = system.online_status(recipient.user_id()).await;
        if status
            .get(&recipient.device_id().to_string())
            .is_some_and(|value| value.starts_with(&format!("{node}|")))
        {
            return false;
        }
    }
    true
}

/// Deliver calls of the logic tier that did not succeed, from its metrics.
async fn failed_deliver_calls(system: &System) -> u64 {
    let text = scrape(system.logic.metrics_addr).await;
    text.lines()
        .filter(|line| line.starts_with("im_logic_deliver_calls_total{"))
        .filter(|line| !line.contains("result=\"ok\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn sigterm_drains_engine_in_time() {
    run("SIGTERM", Duration::from_secs(90), sigterm_shutdown());
}

async fn sigterm_shutdown() {
    let settings = EngineSettings::default();
    let mut system = System::start("sigterm", 1, &settings);
    let url = system.ws_url(0);
    let users = open_users(&url, "st", 10, 1).await;
    let mut clients = Vec::new();
    for devices in &users {
        let client = connect(&url).await;
        let login = &devices[0].login;
        client
            .sign_in(login.user_id, login.device_id, &login.token)
            .await
            .expect("sign-in");
        clients.push(client);
    }
    assert_eq!(system.online_users().await, users.len());

    let grace = Duration::from_millis(settings.shutdown_grace_ms);
    let margin = Duration::from_secs(3);
    let (success, took) = block_in_place(|| system.engines[0].terminate(grace + margin * 3));

    assert!(success, "the engine exited with a failure status");
    assert!(
        took < grace + margin,
        "the engine took {took:?} to exit (grace {grace:?})"
    );
    for client in &mut clients {
        let (code, _) = client
            .wait_closed(Duration::from_secs(5))
            .await
            .expect("the connection closes");
        assert_eq!(code, 1001);
    }
    let online = system.redis.keys("online:*").await;
    assert!(
        online.is_empty(),
        "online status left after the shutdown: {online:?}"
    );
    println!("SIGTERM: the engine exited after {took:?}");
}

#[test]
fn seqs_continue_after_redis_loses_its_data() {
    run("Redis flush", Duration::from_secs(90), redis_flush_seq());
}

async fn redis_flush_seq() {
    let mut system = System::start("redis-flush", 1, &EngineSettings::default());
    let url = system.ws_url(0);
    let users = open_users(&url, "rf", 2, 1).await;
    let (alice, bob) = (&users[0][0], &users[1][0]);
    let bob_client = connect(&url).await;
    bob_client
        .sign_in(bob.user_id(), bob.device_id(), &bob.login.token)
        .await
        .expect("bob signs in");
    send_batch(&bob_client, alice.user_id(), 0..10).await;

    system.redis.kill();
    block_in_place(|| system.redis.resume());
    // Bob's connection stays signed in on the engine; his sends need PostgreSQL only.
    let replies = send_batch(&bob_client, alice.user_id(), 10..20).await;
    assert_eq!(replies, (11..=20).collect::<Vec<_>>(), "bob's own seqs");

    let alice_client = connect(&url).await;
    let signed_in = alice_client
        .sign_in(alice.user_id(), alice.device_id(), &alice.login.token)
        .await;
    // A token kept only in Redis is gone: the sign-in must fail with DEVICE_UNKNOWN, not
    // silently, and the device logs in again. A token kept durably signs in as before.
    match signed_in {
        Ok(_) => println!("Redis flush: the token survived, the device signed in"),
        Err(ClientError::Server {
            code: ErrorCode::DeviceUnknown,
            ..
        }) => {
            let login = alice_client
                .login(&alice.username, PASSWORD, alice.device_id(), test_device())
                .await
                .expect("alice logs in again");
            assert_eq!(login.device_id, alice.device_id());
            println!("Redis flush: the token was lost, the device logged in again");
        }
        Err(other) => panic!("sign-in after Redis lost its data: {other}"),
    }
    let messages = sync_from_zero(&alice_client).await.expect("sync");

    let seqs: Vec<u64> = messages.iter().map(|message| message.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let texts: Vec<String> = messages
        .iter()
        .map(|message| String::from_utf8_lossy(&message.content).into_owned())
        .collect();
    assert_eq!(texts, (0..20).map(|n| format!("n{n}")).collect::<Vec<_>>());
    close(alice_client).await;
    close(bob_client).await;
}

/// Sends messages `n{i}` for each i in `range` to `receiver`; returns the sender's seqs.
async fn send_batch(client: &Client, receiver: u64, range: std::ops::Range<u32>) -> Vec<u64> {
    let mut seqs = Vec::new();
    for n in range {
        let reply = client
            .send(
                ConversationType::User,
                receiver,
                format!("n{n}"),
                "text/plain",
                &format!("flush-{n}"),
            )
            .await
            .unwrap_or_else(|error| panic!("send n{n}: {error}"));
        seqs.push(reply.seq);
    }
    seqs
}

async fn close(client: Client) {
    client.close().await.expect("close handshake");
}

#[test]
fn pushes_resume_after_redis_restart() {
    run(
        "push after Redis restart",
        Duration::from_secs(90),
        push_after_redis_restart(),
    );
}

async fn push_after_redis_restart() {
    // Redis comes back empty; the engine's next lease renewal learns that and reports its
    // signed-in devices, so both online statuses return without a new sign-in.
    let mut system = System::start("redis-push", 1, &EngineSettings::default());
    let url = system.ws_url(0);
    let users = open_users(&url, "rp", 2, 1).await;
    let (alice, bob) = (&users[0][0], &users[1][0]);
    let alice_client = connect(&url).await;
    alice_client
        .sign_in(alice.user_id(), alice.device_id(), &alice.login.token)
        .await
        .expect("alice signs in");
    let bob_client = connect(&url).await;
    bob_client
        .sign_in(bob.user_id(), bob.device_id(), &bob.login.token)
        .await
        .expect("bob signs in");

    system.redis.kill();
    block_in_place(|| system.redis.resume());
    assert_eq!(system.online_users().await, 0, "Redis came back with data");
    let deadline = Instant::now() + Duration::from_secs(15);
    while system.online_users().await < 2 {
        assert!(
            Instant::now() < deadline,
            "the engine did not restore both online statuses within 15 s of Redis returning"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send_batch(&bob_client, alice.user_id(), 0..1).await;

    let push = tokio::time::timeout(Duration::from_secs(5), alice_client.next_push()).await;
    assert!(
        matches!(push, Ok(Some(_))),
        "alice, connected through the Redis restart, got no push: {push:?}"
    );
    close(alice_client).await;
    close(bob_client).await;
}

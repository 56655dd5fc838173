//! Node leases end to end: an engine node that stops renewing its lease is taken for dead. Its
//! devices' online status is removed within the lease TTL plus the reaper interval, nothing more
//! is pushed to it, and the messages sent meanwhile reach each device by SYNC once it signs in
//! on another node.

mod support;

use std::time::{Duration, Instant};

use im_client::business::LogicApi;
use im_client::{Client, ConnectOptions};
use im_engine::Engine;
use im_proto::{ConversationType, LoginReply};
use support::*;

/// Devices on the node that dies.
const DEVICES: usize = 100;

/// Messages each of those users receives after the node died.
const MESSAGES_AFTER_DEATH: usize = 3;

/// Lease settings of the node that dies: short, so that the test waits little.
const LEASE_INTERVAL_MS: u64 = 300;
const LEASE_TTL_MS: u64 = 1_500;

/// The reaper runs every second; one more second covers a loaded machine.
const REAP_MARGIN: Duration = Duration::from_secs(2);

const TEXT: &str = "text/plain";

struct Recipient {
    login: LoginReply,
    client: Client,
}

/// A logic tier, a node with a short lease whose devices receive, and a second node whose
/// device sends to each of them.
struct Cluster {
    logic: im_logic::LogicServer,
    leased: Engine,
    other: Engine,
    sender: Client,
    recipients: Vec<Recipient>,
}

impl Cluster {
    /// Starts the processes, signs in the sender and [`DEVICES`] recipients, each of its own
    /// open user.
    async fn start(sender_name: &str) -> Cluster {
        init_tracing();
        let logic = im_logic::start(logic_config()).await.expect("logic starts");
        let leased = start_engine(logic.local_addr(), true);
        let other = start_engine(logic.local_addr(), false);
        let api = LogicApi::connect(
            &format!("http://{}", logic.local_addr()),
            Duration::from_secs(5),
        )
        .await
        .expect("business API reachable");
        let sender = connect(&other).await;
        register_and_login(&sender, sender_name).await;
        let mut recipients = Vec::with_capacity(DEVICES);
        for _ in 0..DEVICES {
            recipients.push(open_recipient(&api, &leased).await);
        }
        Cluster {
            logic,
            leased,
            other,
            sender,
            recipients,
        }
    }

    /// Waits up to `within` for every recipient's status to be gone, and returns whether it is.
    async fn statuses_gone(&self, within: Duration) -> bool {
        eventually(within, || async {
            for recipient in &self.recipients {
                if online_status(recipient.login.user_id)
                    .await
                    .contains_key(&recipient.login.device_id.to_string())
                {
                    return false;
                }
            }
            true
        })
        .await
    }

    async fn stop(self) {
        drop(self.recipients);
        let (leased, other) = (self.leased, self.other);
        tokio::task::spawn_blocking(move || leased.shutdown())
            .await
            .unwrap();
        tokio::task::spawn_blocking(move || other.shutdown())
            .await
            .unwrap();
        self.logic.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_node_statuses_are_reaped_and_messages_synced() {
    let cluster = Cluster::start("lease-sender").await;
    let (doomed, survivor) = (&cluster.leased, &cluster.other);
    let (sender, recipients) = (&cluster.sender, &cluster.recipients);
    for recipient in recipients {
        let status = online_status(recipient.login.user_id).await;
        let value = &status[&recipient.login.device_id.to_string()];
        assert!(value.starts_with(&format!("{}|", doomed.node())), "{value}");
    }

    // One message while the node is alive: it is pushed there.
    send_to_all(sender, recipients, "before").await;
    for recipient in recipients {
        let pushed = next_message(&recipient.client, Duration::from_secs(5)).await;
        assert_eq!(pushed.seq, 1);
    }

    doomed.stop_lease_renewal();
    let stopped = Instant::now();
    let deadline = Duration::from_millis(LEASE_TTL_MS) + REAP_MARGIN;
    let reaped = cluster
        .statuses_gone(deadline + Duration::from_secs(3))
        .await;
    let took = stopped.elapsed();
    assert!(reaped, "statuses still name the dead node after {took:?}");
    assert!(
        took <= deadline,
        "reaped after {took:?}, more than {deadline:?}"
    );

    let delivers_before = deliver_calls(doomed);
    for round in 0..MESSAGES_AFTER_DEATH {
        send_to_all(sender, recipients, &format!("after-{round}")).await;
    }
    assert_eq!(
        deliver_calls(doomed),
        delivers_before,
        "Deliver was called on the dead node"
    );
    for recipient in recipients {
        let push = push_within(&recipient.client, Duration::from_millis(20)).await;
        assert!(push.is_none(), "the dead node's device got {push:?}");
    }

    let expected: Vec<String> = std::iter::once("before".to_owned())
        .chain((0..MESSAGES_AFTER_DEATH).map(|round| format!("after-{round}")))
        .collect();
    for recipient in recipients {
        let moved = connect(survivor).await;
        moved
            .sign_in(
                recipient.login.user_id,
                recipient.login.device_id,
                &recipient.login.token,
            )
            .await
            .expect("sign-in on the surviving node");
        let (messages, _) = sync_all(&moved, 0, 100).await;
        assert_eq!(
            seqs(&messages),
            vec![1, 2, 3, 4],
            "user {}",
            recipient.login.user_id
        );
        assert_eq!(texts(&messages), expected);
        let status = online_status(recipient.login.user_id).await;
        let value = &status[&recipient.login.device_id.to_string()];
        assert!(
            value.starts_with(&format!("{}|", survivor.node())),
            "{value}"
        );
        moved.close().await.expect("close on the surviving node");
    }

    cluster.stop().await;
}

/// A node that stalls past its lease and then recovers keeps its connections, but the logic tier
/// dropped their statuses and pushed nothing there meanwhile. Once the node reports its devices,
/// each device that had not acked its newest message gets that message pushed, and a SYNC from
/// the last seq it had returns what it missed. A device that had acked it gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_node_devices_get_what_they_missed() {
    let cluster = Cluster::start("stall-sender").await;
    let stalled = &cluster.leased;
    let (sender, recipients) = (&cluster.sender, &cluster.recipients);
    send_to_all(sender, recipients, "before").await;
    for recipient in recipients {
        assert_eq!(
            next_message(&recipient.client, Duration::from_secs(5))
                .await
                .seq,
            1
        );
        recipient.client.ack(1).await.expect("ack seq 1");
    }

    stalled.stop_lease_renewal();
    let reaped = cluster
        .statuses_gone(Duration::from_millis(LEASE_TTL_MS) + REAP_MARGIN + Duration::from_secs(3))
        .await;
    assert!(reaped, "statuses still name the stalled node");

    for round in 0..MESSAGES_AFTER_DEATH {
        send_to_all(sender, recipients, &format!("missed-{round}")).await;
    }
    let newest = 1 + MESSAGES_AFTER_DEATH as u64;
    // The first device fetches and acks what it missed before the node recovers.
    let (caught_up, rest) = recipients.split_first().expect("devices");
    let (fetched, _) = sync_all(&caught_up.client, 1, 100).await;
    assert_eq!(seqs(&fetched), (2..=newest).collect::<Vec<_>>());
    caught_up.client.ack(newest).await.expect("ack the newest");
    // Acks are stored in batches; wait until this one is.
    assert!(
        eventually(Duration::from_secs(5), || async {
            acked_seq(caught_up.login.device_id).await == Some(newest)
        })
        .await,
        "the ack of seq {newest} was not stored"
    );
    for recipient in rest {
        let push = push_within(&recipient.client, Duration::from_millis(20)).await;
        assert!(push.is_none(), "the stalled node's device got {push:?}");
    }

    stalled.resume_lease_renewal();
    let expected: Vec<String> = (0..MESSAGES_AFTER_DEATH)
        .map(|round| format!("missed-{round}"))
        .collect();
    for recipient in rest {
        let pushed = next_message(&recipient.client, Duration::from_secs(10)).await;
        assert_eq!(pushed.seq, newest, "user {}", recipient.login.user_id);
        let (messages, _) = sync_all(&recipient.client, 1, 100).await;
        assert_eq!(seqs(&messages), (2..=newest).collect::<Vec<_>>());
        assert_eq!(texts(&messages), expected);
        let status = online_status(recipient.login.user_id).await;
        let value = &status[&recipient.login.device_id.to_string()];
        assert!(
            value.starts_with(&format!("{}|", stalled.node())),
            "{value}"
        );
    }
    let push = push_within(&caught_up.client, Duration::from_millis(500)).await;
    assert!(push.is_none(), "the device that acked got {push:?}");

    cluster.stop().await;
}

fn start_engine(logic_addr: std::net::SocketAddr, short_lease: bool) -> Engine {
    let mut config = engine_config(logic_addr);
    if short_lease {
        config.lease_interval_ms = LEASE_INTERVAL_MS;
        config.lease_ttl_ms = LEASE_TTL_MS;
    }
    Engine::start(config).expect("engine starts")
}

async fn connect(engine: &Engine) -> Client {
    let url = format!("ws://{}/ws", engine.ws_addr());
    Client::connect(&url, &ConnectOptions::default())
        .await
        .expect("websocket connects")
}

/// Registers a user open to direct messages and logs its device in on `engine`.
async fn open_recipient(api: &LogicApi, engine: &Engine) -> Recipient {
    let username = unique_username("lease-rcpt");
    api.register(&username, PASSWORD, true)
        .await
        .expect("register an open user");
    let client = connect(engine).await;
    let login = client
        .login(&username, PASSWORD, 0, test_device())
        .await
        .expect("login on the node");
    Recipient { login, client }
}

async fn send_to_all(sender: &Client, recipients: &[Recipient], text: &str) {
    for recipient in recipients {
        let client_msg_id = format!("{text}-{}", recipient.login.user_id);
        sender
            .send(
                ConversationType::User,
                recipient.login.user_id,
                text.to_owned(),
                TEXT,
                &client_msg_id,
            )
            .await
            .expect("send is stored");
    }
}

/// Returns how many Deliver calls `engine` has served, from its metrics.
fn deliver_calls(engine: &Engine) -> u64 {
    let text = engine.metrics().render();
    text.lines()
        .find_map(|line| line.strip_prefix("im_engine_deliver_seconds_count "))
        .and_then(|value| value.parse().ok())
        .expect("im_engine_deliver_seconds_count in the engine metrics")
}

//! An engine updated before its logic tier. A logic tier built before SendMany,
//! ConnSignInMany, AckMany and OfflineMany returns UNIMPLEMENTED for them, as any gRPC server
//! does for a method it does not serve. Here a gRPC front on loopback returns that and passes
//! every other call to a real logic tier. The engine must fall back to the single calls, with
//! every sign-in, message, ack and Offline carried out.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use im_engine::Engine;
use im_proto::ConversationType;
use support::*;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint, Server};

/// The methods a logic tier of the older version does not serve.
const NEWER_METHODS: [&str; 4] = ["SendMany", "ConnSignInMany", "AckMany", "OfflineMany"];

/// Calls seen by the front, by method name.
type Seen = Arc<Mutex<HashMap<String, usize>>>;

/// The engine-facing service of an older logic tier: rejects the newer methods and passes the
/// rest to the real logic tier.
#[derive(Clone)]
struct OlderLogic {
    logic: Channel,
    seen: Seen,
}

impl NamedService for OlderLogic {
    const NAME: &'static str = "im.v1.DeviceIntService";
}

impl Service<http::Request<Body>> for OlderLogic {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        *self.seen.lock().unwrap().entry(method.clone()).or_default() += 1;
        let mut logic = self.logic.clone();
        Box::pin(async move {
            if NEWER_METHODS.contains(&method.as_str()) {
                return Ok(tonic::Status::unimplemented("").into_http());
            }
            let forwarded = async {
                std::future::poll_fn(|cx| logic.poll_ready(cx)).await?;
                logic.call(request).await
            };
            Ok(match forwarded.await {
                Ok(response) => response,
                Err(err) => tonic::Status::unavailable(err.to_string()).into_http(),
            })
        })
    }
}

/// Serves [`OlderLogic`] on a free loopback port in front of the logic tier at `logic_addr`.
async fn start_front(logic_addr: SocketAddr, seen: Seen) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let logic = Endpoint::from_shared(format!("http://{logic_addr}"))
        .unwrap()
        .connect_lazy();
    let front = OlderLogic { logic, seen };
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        Server::builder()
            .add_service(front)
            .serve_with_incoming(incoming),
    );
    addr
}

fn count(seen: &Seen, method: &str) -> usize {
    seen.lock().unwrap().get(method).copied().unwrap_or(0)
}

/// Reads the highest seq stored for a device by its acks, straight from PostgreSQL.
async fn acked_seq(device_id: u64) -> Option<i64> {
    let (client, connection) =
        tokio_postgres::connect(&env_url("IM_LOGIC_DATABASE_URL"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_opt(
            "SELECT acked_seq FROM device_acks WHERE device_id = $1",
            &[&i64::try_from(device_id).unwrap()],
        )
        .await
        .unwrap();
    row.map(|row| row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_logic_gets_single_calls() {
    init_tracing();
    let logic_config = logic_config();
    let logic = im_logic::start(logic_config.clone()).await.unwrap();
    let seen = Seen::default();
    let front = start_front(logic.local_addr(), seen.clone()).await;
    let engine = Engine::start(engine_config(front)).expect("engine starts");
    let stack = Stack {
        logic: Some(logic),
        logic_config,
        engine: Some(engine),
    };

    let (sender, sender_client) = stack.new_user("older-sender").await;
    let (receiver, receiver_client) = stack.new_user("older-receiver").await;
    make_friends(&sender, &receiver).await;
    // The receiver's device signs in again with its token on a new connection: SIGN_IN goes
    // out as ConnSignInMany, which is rejected, and then as ConnSignIn.
    receiver_client.close().await.unwrap();
    let second = stack.sign_in(&receiver.login).await;

    let mut seqs = Vec::new();
    for index in 0..5 {
        let reply = sender_client
            .send(
                ConversationType::User,
                receiver.id(),
                format!("message {index}"),
                "text/plain",
                &format!("older-{index}"),
            )
            .await
            .expect("SEND is stored through the single call");
        assert!(reply.message_id > 0);
    }
    for index in 0..5 {
        let message = next_message(&second, Duration::from_secs(5)).await;
        assert_eq!(message.content, format!("message {index}").as_bytes());
        seqs.push(message.seq);
    }
    let last = *seqs.last().unwrap();
    second.ack(last).await.unwrap();
    let device = receiver.login.device_id;
    let stored = eventually(Duration::from_secs(5), || async {
        acked_seq(device).await == Some(i64::try_from(last).unwrap())
    })
    .await;
    assert!(stored, "the ack is stored through the single call");

    second.close().await.unwrap();
    let removed = eventually(Duration::from_secs(5), || async {
        online_status(receiver.id()).await.is_empty()
    })
    .await;
    assert!(removed, "the Offline calls remove the receiver's statuses");

    // Each newer method was tried once, then the engine kept to the single calls.
    for (many, single) in [
        ("ConnSignInMany", "ConnSignIn"),
        ("SendMany", "Send"),
        ("AckMany", "Ack"),
        ("OfflineMany", "Offline"),
    ] {
        assert_eq!(count(&seen, many), 1, "{many} tried once");
        assert!(count(&seen, single) >= 1, "{single} used");
    }
    assert_eq!(count(&seen, "Send"), 5);
    sender_client.close().await.unwrap();
    stack.stop().await;
}

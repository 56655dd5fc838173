//! A gRPC front on loopback between an engine node and a real logic tier. It passes each
//! engine call on, or plays another logic tier: an older one that lacks a method, or a slow one
//! that carries a call out but replies late.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint, Server};

/// What the front does with a call, by method name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Play {
    /// Passes the call on and returns the reply.
    Forward,
    /// Returns UNIMPLEMENTED without passing the call on, as a logic tier without the method.
    Unimplemented,
    /// Passes the call on at once, so that the logic tier carries it out even if the engine
    /// gives up, and returns the reply only after this long.
    ReplyAfter(Duration),
}

/// The function that picks the play for each method name.
pub type Script = Arc<dyn Fn(&str) -> Play + Send + Sync>;

/// Returns a script that holds back the replies to `methods` for `hold` and forwards every
/// other call.
pub fn hold_replies(methods: &'static [&'static str], hold: Duration) -> Script {
    Arc::new(move |method: &str| {
        if methods.contains(&method) {
            Play::ReplyAfter(hold)
        } else {
            Play::Forward
        }
    })
}

/// The engine calls a running front has seen.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<HashMap<String, usize>>>);

impl Seen {
    /// Returns how many calls of `method` the front has seen.
    pub fn count(&self, method: &str) -> usize {
        self.0.lock().unwrap().get(method).copied().unwrap_or(0)
    }

    fn add(&self, method: &str) {
        *self.0.lock().unwrap().entry(method.to_owned()).or_default() += 1;
    }
}

#[derive(Clone)]
struct Front {
    logic: Channel,
    script: Script,
    seen: Seen,
}

impl NamedService for Front {
    const NAME: &'static str = "im.v1.DeviceIntService";
}

impl Service<http::Request<Body>> for Front {
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
        self.seen.add(&method);
        let play = (self.script)(&method);
        let mut logic = self.logic.clone();
        Box::pin(async move {
            let delay = match play {
                Play::Unimplemented => return Ok(tonic::Status::unimplemented("").into_http()),
                Play::Forward => Duration::ZERO,
                Play::ReplyAfter(delay) => delay,
            };
            // Spawned, so that the logic tier gets the whole call even when the engine resets
            // the stream at its deadline.
            let forwarded = tokio::spawn(async move {
                std::future::poll_fn(|cx| logic.poll_ready(cx)).await?;
                logic.call(request).await
            });
            tokio::time::sleep(delay).await;
            Ok(match forwarded.await {
                Ok(Ok(response)) => response,
                Ok(Err(err)) => tonic::Status::unavailable(err.to_string()).into_http(),
                Err(err) => tonic::Status::internal(err.to_string()).into_http(),
            })
        })
    }
}

/// Serves a front on a free loopback port before the logic tier at `logic_addr`, and returns
/// its address and the record of the calls it receives.
pub async fn start(logic_addr: SocketAddr, script: Script) -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let logic = Endpoint::from_shared(format!("http://{logic_addr}"))
        .unwrap()
        .connect_lazy();
    let seen = Seen::default();
    let front = Front {
        logic,
        script,
        seen: seen.clone(),
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        Server::builder()
            .add_service(front)
            .serve_with_incoming(incoming),
    );
    (addr, seen)
}

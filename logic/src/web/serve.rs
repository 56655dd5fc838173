//! The web port's connection loop: HTTP/1.1 only, on a [`GuardedListener`].
//!
//! The port serves no HTTP/2, neither with prior knowledge nor through an `Upgrade: h2c`
//! header, for two reasons:
//!
//! - Its clients do not need HTTP/2. Browsers speak HTTP/2 only over TLS (negotiated with
//!   ALPN), so to a plain `http://` origin they speak HTTP/1.1, and gRPC-Web runs over
//!   HTTP/1.1.
//! - The connection limit and the idle timeout of [`guard`](super::guard) count connections,
//!   which bounds the work of one client only while a connection carries one request at a
//!   time. One HTTP/2 connection carries many requests (streams) at once, 200 by default in
//!   hyper 1.13, each of which may read a body of up to 8 MiB. So a single connection could
//!   take the whole body budget that all connections share.
//!
//! A client that starts with the HTTP/2 preface (`PRI * HTTP/2.0`) gets no response, because
//! hyper's HTTP/1 server (hyper 1.13) rejects the preface and closes the connection.

use std::future::Future;
use std::pin::pin;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{mpsc, watch};

use super::guard::GuardedListener;

/// Serves `router` on `listener` over HTTP/1.1 until `shutdown` completes. Then it stops
/// accepting, lets each open connection finish the request it is serving, and returns once
/// every connection is closed. Each request carries its connection's
/// [`ConnectionCalls`](super::guard::ConnectionCalls) as [`ConnectInfo`], for
/// [`guard_router`](super::guard::guard_router).
pub async fn serve_http1(
    mut listener: GuardedListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    // Dropping `stop` makes every connection close after its current request.
    let (stop, stopped) = watch::channel(());
    // Each connection task owns a clone of `open`, so `all_closed` ends when the last task ends.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let calls = stream.calls();
        let router = TowerToHyperService::new(router.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(calls.clone()));
            hyper::service::Service::call(&router, request)
        });
        let mut stopped = stopped.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let mut connection = pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stopped.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%addr, error = %err, "web connection ended with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    drop(stop);
    drop(open);
    let _ = all_closed.recv().await;
}

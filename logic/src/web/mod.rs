//! The HTTP server of the web client: the built static files of `web_root` and
//! `LogicExtService` as gRPC-Web (tonic-web), on one listener so the page and its business calls
//! share an origin and need no CORS.
//!
//! gRPC-Web requests are routed by path (`/im.v1.LogicExtService/METHOD`); every other request
//! is a static file request (see [`files`]). [`guard`] bounds the open connections, closes idle
//! ones and limits the time and size of request bodies and the bytes they hold together. The
//! port speaks HTTP/1.1 only. [`serve`] explains why and describes how a shutdown closes the
//! connections.

pub mod files;
pub mod guard;
pub mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic_web::GrpcWebLayer;
use tower_layer::Layer;

use crate::server::STOP_GRACE;
use crate::service::{ExtService, Logic};
use files::StaticFiles;
use guard::{guard_router, GuardedListener};
use serve::serve_http1;

/// A running web server; [`WebServer::shutdown`] stops it.
pub struct WebServer {
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl WebServer {
    /// Returns the bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, lets each open connection finish the request it has begun,
    /// and drops the connections still open after 5 s. No request is served after it returns.
    pub async fn shutdown(self) {
        // The task may have ended already, dropping the receiver: nothing left to stop.
        let _ = self.stop.send(());
        // The task returns within the grace period plus the time to drop its connections.
        if self.task.await.is_err() {
            tracing::error!("web server task panicked");
        }
        tracing::info!(addr = %self.local_addr, "web server stopped");
    }
}

/// Serves the files of `root` and `LogicExtService` over gRPC-Web on `listener` in a spawned
/// task. A `root` without an index.html is logged as a warning, and the server still runs and
/// returns 404 for page requests.
pub fn spawn(
    listener: TcpListener,
    root: PathBuf,
    logic: Arc<Logic>,
) -> std::io::Result<WebServer> {
    let local_addr = listener.local_addr()?;
    let files = StaticFiles::new(root);
    files.warn_if_unbuilt();
    let grpc_web = GrpcWebLayer::new().layer(ExtService::for_web(logic).into_server());
    let router = Routes::new(grpc_web)
        .prepare()
        .into_axum_router()
        .fallback(move |request| files::respond(files.clone(), request));

    let max_connections = guard::max_connections();
    let listener = GuardedListener::new(listener, max_connections, guard::IDLE_TIMEOUT);

    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tracing::info!(
            addr = %local_addr,
            protocol = "HTTP/1.1",
            max_connections,
            idle_timeout_s = guard::IDLE_TIMEOUT.as_secs(),
            "web server listening"
        );
        let shutdown = async {
            // A dropped sender also stops the server, because no other handle could stop it.
            let _ = stopped.await;
        };
        serve_http1(listener, guard_router(router), shutdown, STOP_GRACE).await;
    });
    Ok(WebServer {
        local_addr,
        stop,
        task,
    })
}

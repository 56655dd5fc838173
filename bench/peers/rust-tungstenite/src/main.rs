//! WebSocket echo server on tokio and tokio-tungstenite: accepts on `--addr`, sends every
//! binary message back and replies to pings with pongs (tungstenite queues the pong while reading).
//!
//! Each connection reads through a 4 KiB buffer instead of the 128 KiB default, which keeps
//! idle connections small, as the tungstenite `WebSocketConfig` documentation suggests for
//! many connections.

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const READ_BUFFER_BYTES: usize = 4 * 1024;
const WRITE_BUFFER_BYTES: usize = 0;
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[tokio::main]
async fn main() {
    let addr = match parse_addr(std::env::args().skip(1)) {
        Ok(addr) => addr,
        Err(message) => {
            eprintln!("peer-rust-tungstenite: {message}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("peer-rust-tungstenite: binding {addr} failed: {error}");
            std::process::exit(1);
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream));
            }
            Err(error) => eprintln!("peer-rust-tungstenite: accept failed: {error}"),
        }
    }
}

/// Reads `--addr HOST:PORT` from the arguments.
fn parse_addr(mut args: impl Iterator<Item = String>) -> Result<String, String> {
    match (args.next().as_deref(), args.next()) {
        (Some("--addr"), Some(addr)) => Ok(addr),
        _ => Err("usage: peer-rust-tungstenite --addr HOST:PORT".to_owned()),
    }
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Echoes binary messages until the peer closes or an error occurs.
async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(mut socket) = tokio_tungstenite::accept_async_with_config(stream, Some(config())).await
    else {
        return;
    };
    while let Some(Ok(message)) = socket.next().await {
        let result = match message {
            Message::Binary(data) => socket.send(Message::Binary(data)).await,
            Message::Close(_) => break,
            // Pongs to pings are queued by the read and flushed here.
            _ => socket.flush().await,
        };
        if result.is_err() {
            break;
        }
    }
}

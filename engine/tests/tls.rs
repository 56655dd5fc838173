//! wss:// on the engine's WebSocket listener: real TLS over loopback with certificates from a
//! test CA, a client that verifies them, certificate reload, and clients that must fail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use im_engine::{Config, Engine, EngineError};
use im_proto::{ErrorCode, Packet, PacketType};
use prost::Message as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{assert_unread_pongs_close_with_4008, upgrade_request};

type Socket = tokio_tungstenite::WebSocketStream<TlsStream<tokio::net::TcpStream>>;

/// A certificate authority made for one test.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate for "localhost" and its key, as PEM and DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Returns a client configuration that trusts only this CA.
    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("im-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn cert(&self) -> PathBuf {
        self.0.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.0.join("key.pem")
    }

    /// Writes `leaf` as the certificate and key files, replacing earlier ones.
    fn install(&self, leaf: &Leaf) {
        std::fs::write(self.cert(), &leaf.cert_pem).unwrap();
        std::fs::write(self.key(), &leaf.key_pem).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Returns a logic URL where nothing listens: a port just bound and released.
fn dead_logic_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn tls_config(dir: &TempDir) -> Config {
    Config {
        ws_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".to_owned(),
        logic_url: dead_logic_url(),
        shards: 2,
        tls_cert_file: dir.cert().display().to_string(),
        tls_key_file: dir.key().display().to_string(),
        ..Config::default()
    }
}

fn start_engine(dir: &TempDir, adjust: impl FnOnce(&mut Config)) -> Engine {
    let mut config = tls_config(dir);
    adjust(&mut config);
    Engine::start(config).expect("engine starts")
}

/// Opens a TLS connection that verifies the server against `client`'s roots.
async fn connect_tls(
    engine: &Engine,
    client: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(engine.ws_addr()).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let connect = TlsConnector::from(client).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("TLS handshake ends within 10 s")
}

/// Opens a wss:// WebSocket and returns it with the certificate the server presented.
async fn connect(engine: &Engine, ca: &TestCa) -> (Socket, CertificateDer<'static>) {
    connect_addr(engine.ws_addr(), ca)
        .await
        .expect("TLS handshake and upgrade")
}

fn heartbeat(request_id: u64) -> Message {
    let packet = Packet {
        r#type: PacketType::Heartbeat as i32,
        request_id,
        ..Packet::default()
    };
    Message::Binary(packet.encode_to_vec().into())
}

/// Reads until a binary message arrives and decodes it as a Packet.
async fn next_packet(socket: &mut Socket) -> Packet {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .expect("a valid frame");
        if let Message::Binary(data) = message {
            return Packet::decode(data).expect("a Packet");
        }
    }
}

/// Sends HEARTBEAT before sign-in and checks the NOT_SIGNED_IN reply, which needs no logic
/// tier.
async fn assert_heartbeat_answered(socket: &mut Socket, request_id: u64) {
    socket.send(heartbeat(request_id)).await.unwrap();
    let reply = next_packet(socket).await;
    assert_eq!(reply.r#type, PacketType::Heartbeat as i32);
    assert_eq!(reply.request_id, request_id);
    assert_eq!(reply.code, ErrorCode::NotSignedIn as i32);
}

#[tokio::test]
async fn wss_client_exchanges_packets() {
    let ca = TestCa::new("exchange CA");
    let leaf = ca.leaf();
    let dir = TempDir::new("exchange");
    dir.install(&leaf);
    let engine = start_engine(&dir, |_| {});
    assert!(engine.is_tls());

    let (mut socket, presented) = connect(&engine, &ca).await;
    assert_eq!(presented, leaf.der);
    assert_heartbeat_answered(&mut socket, 7).await;
    // A reply larger than one TLS record's plaintext share of a small write.
    socket
        .send(Message::Binary(vec![0xff; 20_000].into()))
        .await
        .unwrap();
    let reply = next_packet(&mut socket).await;
    assert_eq!(reply.r#type, PacketType::Error as i32);
    assert_heartbeat_answered(&mut socket, 8).await;
    engine.shutdown();
}

#[tokio::test]
async fn untrusted_client_fails_and_others_are_served() {
    let ca = TestCa::new("served CA");
    let dir = TempDir::new("untrusted");
    dir.install(&ca.leaf());
    let engine = start_engine(&dir, |_| {});
    let (mut bystander, _) = connect(&engine, &ca).await;

    let stranger = TestCa::new("other CA");
    let refused = connect_tls(&engine, stranger.client_config()).await;
    let err = refused.expect_err("a client that does not trust the CA fails the handshake");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    assert_heartbeat_answered(&mut bystander, 1).await;
    let (mut later, _) = connect(&engine, &ca).await;
    assert_heartbeat_answered(&mut later, 2).await;
    let metrics = wait_for_metric(&engine, "im_engine_tls_handshake_failures_total 1").await;
    assert!(
        metrics.contains("im_engine_tls_handshake_failures_total 1"),
        "{metrics}"
    );
    engine.shutdown();
}

/// Returns the rendered metrics once they contain `line`, or after 5 s.
async fn wait_for_metric(engine: &Engine, line: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = engine.metrics().render();
        if metrics.contains(line) || tokio::time::Instant::now() >= deadline {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn plain_ws_client_is_refused() {
    let ca = TestCa::new("plain CA");
    let dir = TempDir::new("plain");
    dir.install(&ca.leaf());
    let engine = start_engine(&dir, |_| {});

    let mut tcp = tokio::net::TcpStream::connect(engine.ws_addr())
        .await
        .unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the engine closes the socket within 5 s")
        .expect("a clean close, not a reset");
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    // At most a TLS alert record (content type 21) comes back.
    assert!(answer.is_empty() || answer[0] == 21, "{answer:?}");

    let url = format!("ws://{}/ws", engine.ws_addr());
    let tcp = tokio::net::TcpStream::connect(engine.ws_addr())
        .await
        .unwrap();
    assert!(tokio_tungstenite::client_async(url, tcp).await.is_err());

    let (mut socket, _) = connect(&engine, &ca).await;
    assert_heartbeat_answered(&mut socket, 3).await;
    engine.shutdown();
}

#[tokio::test]
async fn oversized_frame_is_closed_with_1009_over_tls() {
    let ca = TestCa::new("limit CA");
    let dir = TempDir::new("oversized");
    dir.install(&ca.leaf());
    let engine = start_engine(&dir, |config| {
        config.max_frame_bytes = 1024;
        config.max_message_bytes = 1024;
    });
    let (mut socket, _) = connect(&engine, &ca).await;
    let _ = socket.send(Message::Binary(vec![0; 4096].into())).await;
    let code = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a close within 10 s");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 1009);
    // The engine ends the TLS stream with close_notify, so the client sees a clean end.
    let after = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("the stream ends within 5 s");
    assert!(after.is_none(), "{after:?}");
    engine.shutdown();
}

#[tokio::test]
async fn reload_serves_new_certificate_to_new_connections() {
    let ca = TestCa::new("reload CA");
    let (first, second) = (ca.leaf(), ca.leaf());
    let dir = TempDir::new("reload");
    dir.install(&first);
    let engine = start_engine(&dir, |_| {});
    let (mut old, presented) = connect(&engine, &ca).await;
    assert_eq!(presented, first.der);

    dir.install(&second);
    engine.reload_tls().expect("the new files load");
    let (mut new, presented) = connect(&engine, &ca).await;
    assert_eq!(presented, second.der);
    assert_heartbeat_answered(&mut old, 1).await;
    assert_heartbeat_answered(&mut new, 2).await;

    std::fs::write(dir.key(), "not a key").unwrap();
    let err = engine.reload_tls().expect_err("a broken key file fails");
    assert!(
        err.to_string().contains(&dir.key().display().to_string()),
        "{err}"
    );
    let (mut after, presented) = connect(&engine, &ca).await;
    assert_eq!(
        presented, second.der,
        "a failed reload keeps the certificate"
    );
    assert_heartbeat_answered(&mut after, 3).await;
    engine.shutdown();
}

#[test]
fn start_fails_on_unusable_certificate_files() {
    let ca = TestCa::new("start CA");
    let dir = TempDir::new("start");

    let err = start_error(tls_config(&dir));
    assert!(err.contains(&dir.cert().display().to_string()), "{err}");

    std::fs::write(dir.cert(), "no PEM here").unwrap();
    std::fs::write(dir.key(), ca.leaf().key_pem).unwrap();
    let err = start_error(tls_config(&dir));
    assert!(err.contains(&dir.cert().display().to_string()), "{err}");
    assert!(err.contains("no PEM certificate"), "{err}");

    // A key that belongs to another certificate.
    std::fs::write(dir.cert(), ca.leaf().cert_pem).unwrap();
    let err = start_error(tls_config(&dir));
    assert_eq!(
        err,
        format!(
            "the TLS key file {} (tls_key_file) does not belong to the certificate in {} \
             (tls_cert_file): set tls_key_file to the private key the certificate was issued \
             for, or tls_cert_file to the certificate of this key",
            dir.key().display(),
            dir.cert().display()
        )
    );
}

/// Runs `im-engine --check-config` with the certificate files of `dir` and no settings file,
/// and returns its exit status and standard error.
fn check_config(dir: &TempDir) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_im-engine"))
        .args(["--check-config", "--config", "/dev/null"])
        .env("IM_ENGINE_TLS_CERT_FILE", dir.cert())
        .env("IM_ENGINE_TLS_KEY_FILE", dir.key())
        .env("NO_COLOR", "1")
        .output()
        .expect("im-engine runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

#[test]
fn check_config_loads_certificate_files() {
    let ca = TestCa::new("check CA");
    let dir = TempDir::new("check");
    let leaf = ca.leaf();
    dir.install(&leaf);
    let (status, stderr) = check_config(&dir);
    assert_eq!(status, Some(0), "{stderr}");

    std::fs::remove_file(dir.key()).unwrap();
    let (status, stderr) = check_config(&dir);
    assert_eq!(status, Some(2), "a missing key file: {stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read the TLS key file {} (tls_key_file): no such file",
            dir.key().display()
        )),
        "{stderr}"
    );

    std::fs::write(dir.cert(), "no PEM here").unwrap();
    std::fs::write(dir.key(), &leaf.key_pem).unwrap();
    let (status, stderr) = check_config(&dir);
    assert_eq!(status, Some(2), "a certificate that is not PEM: {stderr}");
    assert!(stderr.contains("contains no PEM certificate"), "{stderr}");
    assert!(stderr.contains("(tls_cert_file)"), "{stderr}");

    std::fs::write(dir.cert(), ca.leaf().cert_pem).unwrap();
    let (status, stderr) = check_config(&dir);
    assert_eq!(status, Some(2), "a key of another certificate: {stderr}");
    assert!(
        stderr.contains("does not belong to the certificate"),
        "{stderr}"
    );
}

fn start_error(config: Config) -> String {
    match Engine::start(config) {
        Ok(engine) => {
            engine.shutdown();
            panic!("the engine started with unusable certificate files");
        }
        Err(err) => {
            assert!(matches!(err, EngineError::Tls(_)), "{err}");
            err.to_string()
        }
    }
}

/// Stops the child process on drop, so a failed assert leaves no engine running.
struct ChildEngine(std::process::Child);

impl Drop for ChildEngine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `signal` to the child.
fn signal_child(child: &ChildEngine, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.0.id()).unwrap();
    // SAFETY: kill only sends a signal; the pid is our own child, not yet reaped.
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(sent, 0, "{}", std::io::Error::last_os_error());
}

/// Returns a loopback address with a port that was free a moment ago, below Linux's ephemeral
/// range (32768 to 60999). A port the kernel handed out could be taken by the outgoing
/// connection of a test running beside this one before the engine binds it.
fn free_addr() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};

    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = rand::random::<u32>() % 10_000;
    for _ in 0..10_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        let port = u16::try_from(20_000 + (start + offset * 37) % 10_000).expect("a port");
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().unwrap();
        }
    }
    panic!("no free loopback port found in 20000 to 29999");
}

#[tokio::test]
async fn sighup_reloads_certificate_in_binary() {
    let ca = TestCa::new("signal CA");
    let (first, second) = (ca.leaf(), ca.leaf());
    let dir = TempDir::new("sighup");
    dir.install(&first);
    let ws_addr = free_addr();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_im-engine"))
        .args(["--config", "/dev/null", "--shards", "1"])
        .args(["--ws-addr", &ws_addr.to_string()])
        .args(["--grpc-addr", &free_addr().to_string()])
        .args(["--logic-url", &dead_logic_url()])
        .env("IM_ENGINE_METRICS_ADDR", "")
        .env("IM_ENGINE_TLS_CERT_FILE", dir.cert())
        .env("IM_ENGINE_TLS_KEY_FILE", dir.key())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("im-engine starts");
    let mut child = ChildEngine(child);

    let mut old = connect_addr_when_up(ws_addr, &ca).await;
    assert_eq!(old.1, first.der);
    dir.install(&second);
    signal_child(&child, libc::SIGHUP);
    // The reload runs on the signal thread: poll until new connections get the new certificate.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut new = loop {
        let (socket, presented) = connect_addr(ws_addr, &ca).await.expect("connect");
        if presented == second.der {
            break socket;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_heartbeat_answered(&mut old.0, 1).await;
    assert_heartbeat_answered(&mut new, 2).await;

    signal_child(&child, libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Connects to `addr` as soon as the engine listens there, within 10 s.
async fn connect_addr_when_up(
    addr: std::net::SocketAddr,
    ca: &TestCa,
) -> (Socket, CertificateDer<'static>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match connect_addr(addr, ca).await {
            Ok(connected) => return connected,
            Err(err) if tokio::time::Instant::now() >= deadline => {
                panic!("im-engine did not serve {addr} within 10 s: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Opens a wss:// WebSocket to `addr`.
async fn connect_addr(
    addr: std::net::SocketAddr,
    ca: &TestCa,
) -> Result<(Socket, CertificateDer<'static>), Box<dyn std::error::Error>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    let tls = TlsConnector::from(ca.client_config())
        .connect(name, tcp)
        .await?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or("no certificate")?[0]
        .clone();
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (socket, _) = tokio_tungstenite::client_async(url, tls).await?;
    Ok((socket, presented))
}

#[tokio::test]
async fn slow_reader_is_closed_with_4008_over_tls() {
    let ca = TestCa::new("slow CA");
    let dir = TempDir::new("slow");
    dir.install(&ca.leaf());
    let engine = start_engine(&dir, |config| {
        config.max_outbound_bytes = 64 * 1024;
        config.write_timeout_ms = 30_000;
        // The ping flood below would otherwise meet the rate limits first and close with 4009.
        config.rate_packets_per_sec = 0;
        config.rate_bytes_per_sec = 0;
    });
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(engine.ws_addr()).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = TlsConnector::from(ca.client_config())
        .connect(name, tcp)
        .await
        .unwrap();
    stream
        .write_all(&upgrade_request("localhost"))
        .await
        .unwrap();
    // The pongs fill the socket and rustls' own buffer before the engine's queue.
    assert_unread_pongs_close_with_4008(&mut stream, &engine).await;
    engine.shutdown();
}

#[tokio::test]
async fn bad_upgrade_over_tls_gets_http_error_and_close_notify() {
    let ca = TestCa::new("reject CA");
    let dir = TempDir::new("reject");
    dir.install(&ca.leaf());
    let engine = start_engine(&dir, |_| {});
    let mut stream = connect_tls(&engine, ca.client_config()).await.unwrap();
    stream
        .write_all(b"GET /elsewhere HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // tokio-rustls reports a TLS stream that ends without close_notify as UnexpectedEof.
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the engine closes within 5 s")
        .expect("the stream ends with close_notify");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    engine.shutdown();
}

//! Memory that the web port holds for a request body, compared with what the shared request
//! body budget charges for it.
//!
//! A chunked body arrives as one piece per chunk, and each piece may keep hyper's read buffer,
//! chunk framing included, alive. Kept as pieces, a body of 1 MiB in 1-byte chunks held about
//! 50 MiB while the budget charged 1 MiB, so the 64 MiB budget would have let clients pin
//! several GiB. The guard copies the pieces out, and this test bounds what such a body holds.
//!
//! The test binary counts the live heap with its own global allocator, so this file contains
//! one test only. Another test running at the same time would add its allocations to the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use im_logic::web::guard::{guard_router, GuardedListener};
use im_logic::web::serve::serve_http1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The system allocator, counting the bytes allocated and not yet freed and their peak.
struct CountingAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged, and the counters only
// observe the sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which `System` shares.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let live = LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from `alloc` above with this `layout`.
        unsafe { System.dealloc(pointer, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Size of the uploaded body: 1 MiB.
const BODY_BYTES: usize = 1 << 20;

/// Largest heap growth accepted while the body is read: 8 times the bytes it is charged, room
/// for the body, its joined copy, hyper's buffers and the test client.
const MAX_HEAP_GROWTH: usize = 8 * BODY_BYTES;

/// Serves POST /upload, which replies with the length of the body, behind the web port's guard.
async fn serve_upload() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let router = Router::new().route(
        "/upload",
        axum::routing::post(|request: Request| async move {
            let body = axum::body::to_bytes(request.into_body(), usize::MAX)
                .await
                .expect("the guard passes the whole body on");
            body.len().to_string()
        }),
    );
    let guarded = GuardedListener::new(listener, 8, Duration::from_secs(30));
    let shutdown = std::future::pending();
    tokio::spawn(serve_http1(
        guarded,
        guard_router(router),
        shutdown,
        Duration::ZERO,
    ));
    addr
}

/// Sends a chunked body of `BODY_BYTES` bytes in 1-byte chunks, each `block` holding
/// `chunks_per_block` of them, and checks that the reply is 200 with the body's length.
async fn upload_in_one_byte_chunks(addr: SocketAddr, block: &[u8], chunks_per_block: usize) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = "POST /upload HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("write head");
    for _ in 0..BODY_BYTES / chunks_per_block {
        stream.write_all(block).await.expect("write chunks");
    }
    stream
        .write_all(b"0\r\n\r\n")
        .await
        .expect("write last chunk");

    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut reply))
        .await
        .expect("a reply within 30 s")
        .expect("read the reply");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with(&BODY_BYTES.to_string()), "{reply}");
}

#[tokio::test]
async fn one_byte_chunks_stay_near_their_charge() {
    let addr = serve_upload().await;
    // 8192 chunks of one byte each, written as one block so the client allocates nothing more.
    let chunks_per_block = 8192;
    let block = b"1\r\nx\r\n".repeat(chunks_per_block);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    PEAK_BYTES.store(before, Ordering::Relaxed);

    upload_in_one_byte_chunks(addr, &block, chunks_per_block).await;

    let growth = PEAK_BYTES.load(Ordering::Relaxed).saturating_sub(before);
    assert!(
        growth <= MAX_HEAP_GROWTH,
        "reading a {BODY_BYTES}-byte body of 1-byte chunks grew the heap by {growth} bytes, \
         more than {MAX_HEAP_GROWTH}"
    );
}

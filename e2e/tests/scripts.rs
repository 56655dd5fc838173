//! Shell functions of scripts/lib that need no running service.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Makes a cluster directory `im-pg-<name>` under `root` that names `owner` as its data
/// directory, or names none when `owner` is `None`.
fn cluster_dir(root: &Path, name: &str, owner: Option<&str>) -> PathBuf {
    let dir = root.join(format!("im-pg-{name}"));
    std::fs::create_dir_all(dir.join("pg")).expect("cluster directory");
    if let Some(owner) = owner {
        std::fs::write(dir.join("data-dir"), format!("{owner}\n")).expect("data-dir file");
    }
    dir
}

#[test]
fn sweep_removes_only_clusters_of_deleted_checkouts() {
    let root = std::env::temp_dir().join(format!("im-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let living = root.join("living-checkout");
    std::fs::create_dir_all(&living).expect("living data directory");
    let deleted = root.join("deleted-checkout");
    let deleted = deleted.to_str().expect("UTF-8 path");

    let orphan = cluster_dir(&root, "orphan", Some(deleted));
    let starting = cluster_dir(&root, "starting", Some(deleted));
    let served = cluster_dir(&root, "served", Some(living.to_str().expect("UTF-8 path")));
    let unnamed = cluster_dir(&root, "unnamed", None);
    let relative = cluster_dir(&root, "relative", Some("deleted-checkout"));
    let running = cluster_dir(&root, "running", Some(deleted));
    std::fs::write(running.join("pg/postmaster.pid"), "4242\n").expect("pid file");

    let output = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && _im_sweep_orphan_pg_dirs "$2""#)
        .arg("sweep")
        .arg(repo_file("scripts/lib/services.sh"))
        .arg(&starting)
        .env("IM_PG_SHARED_ROOT", &root)
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    assert!(
        !orphan.exists(),
        "the cluster of a deleted checkout is removed"
    );
    assert!(stderr.contains("im-pg-orphan"), "{stderr}");
    assert!(starting.exists(), "the cluster being started stays");
    assert!(served.exists(), "a cluster whose checkout exists stays");
    assert!(unnamed.exists(), "a cluster that names no checkout stays");
    assert!(
        relative.exists(),
        "a relative name proves nothing and stays"
    );
    assert!(running.exists(), "a cluster with a server pid file stays");
    std::fs::remove_dir_all(&root).expect("clean up");
}

/// A SIGTERM while a script waits for a long command, such as the release build, stops the
/// command and runs the script's trap at once instead of after the command ends.
#[test]
fn sigterm_stops_a_long_command_at_once() {
    let script = r#"
source "$1"
on_term() {
    im_stop_process build "${IM_FOREGROUND_PID:-}" 5
    exit 0
}
trap on_term TERM
im_run sleep 60
echo "not interrupted"
"#;
    let child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("run")
        .arg(repo_file("scripts/lib/processes.sh"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bash runs");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    let pid = i32::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let output = child.wait_with_output().expect("bash exits");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the trap waited {:?} for the command",
        started.elapsed()
    );
    assert!(stderr.contains("[build] stopped"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("not interrupted"));
}

/// `scripts/run` stops before it starts anything when a port it needs is taken, naming the
/// variable that moves it; the metrics ports count too.
#[test]
fn run_refuses_a_taken_metrics_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let free = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let data = std::env::temp_dir().join(format!("im-run-ports-{}", std::process::id()));
    let output = Command::new("timeout")
        .arg("60")
        .arg("bash")
        .arg(repo_file("scripts/run"))
        .env("IM_DATA_DIR", &data)
        .env("IM_LOGIC_LISTEN_ADDR", free())
        .env("IM_ENGINE_WS_ADDR", free())
        .env("IM_ENGINE_GRPC_ADDR", free())
        .env("IM_LOGIC_WEB_ADDR", "")
        .env("IM_ENGINE_METRICS_ADDR", free())
        .env("IM_LOGIC_METRICS_ADDR", &taken_addr)
        .output()
        .expect("scripts/run runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    assert!(!output.status.success(), "{text}");
    assert_eq!(output.status.code(), Some(1), "exits at the check: {text}");
    assert!(
        text.contains(&format!("{taken_addr} is already in use")),
        "{text}"
    );
    assert!(text.contains("IM_LOGIC_METRICS_ADDR"), "{text}");
    assert!(
        !text.contains("starting PostgreSQL"),
        "starts nothing: {text}"
    );
    let _ = std::fs::remove_dir_all(&data);
}

/// The web build is skipped while dist/ is newer than every source, and runs again once a
/// source or a .proto file changes.
#[test]
fn web_build_skipped_while_up_to_date() {
    let root = std::env::temp_dir().join(format!("im-web-built-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let script = r#"
set -e
root=$2
mkdir -p "$root/web/src/gen" "$root/web/dist" "$root/proto"
for f in web/src/main.ts web/src/gen/x.ts web/index.html web/package.json \
    web/package-lock.json web/vite.config.ts web/tsconfig.json web/buf.gen.yaml \
    proto/packet.proto; do
    touch -d '2026-01-01 00:00' "$root/$f"
done
touch -d '2026-01-02 00:00' "$root/web/dist/index.html"
IM_WEB_DIR=$root/web
source "$1"
_im_web_built && echo "fresh: built"
touch -d '2026-01-03 00:00' "$root/web/src/gen/x.ts"
_im_web_built && echo "generated code ignored: built"
touch -d '2026-01-03 00:00' "$root/proto/packet.proto"
_im_web_built || echo "proto changed: stale"
touch -d '2026-01-04 00:00' "$root/web/dist/index.html"
touch -d '2026-01-05 00:00' "$root/web/src/main.ts"
_im_web_built || echo "source changed: stale"
"#;
    let output = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("web")
        .arg(repo_file("scripts/lib/web.sh"))
        .arg(&root)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let _ = std::fs::remove_dir_all(&root);

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout,
        "fresh: built\ngenerated code ignored: built\nproto changed: stale\nsource changed: stale\n"
    );
}

//! The Redis pipelining task against the test Redis.

mod common;

use std::time::Duration;

use im_logic::store::redis_batch::RedisBatcher;
use im_logic::LogicError;
use redis::aio::ConnectionManager;
use redis::Value;

async fn batcher(batch_max: usize) -> RedisBatcher {
    let client = redis::Client::open(common::redis_url()).expect("valid Redis URL");
    let manager = ConnectionManager::new(client)
        .await
        .expect("Redis reachable");
    RedisBatcher::spawn(manager, batch_max, Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_commands_share_few_pipelines() {
    let batcher = batcher(512).await;
    let key = common::unique_name("batch");
    let mut tasks = Vec::new();

    for i in 0..1000u32 {
        let batcher = batcher.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&key).arg(i).arg(i);
            batcher.query(cmd).await
        }));
    }
    for task in tasks {
        let value = task.await.expect("task finished").expect("HSET succeeds");
        assert_eq!(value, Value::Int(1), "each field is new");
    }

    let mut check = redis::cmd("HLEN");
    check.arg(&key);
    assert_eq!(batcher.query(check).await.expect("HLEN"), Value::Int(1000));
    let pipelines = batcher.pipelines_sent();
    println!("1000 commands travelled in {pipelines} pipelines");
    assert_eq!(batcher.commands_sent(), 1001);
    assert!(pipelines <= 100, "{pipelines} pipelines for 1001 commands");
    let mut cleanup = redis::cmd("DEL");
    cleanup.arg(&key);
    batcher.query(cleanup).await.expect("DEL");
}

#[tokio::test]
async fn batch_max_caps_commands_per_pipeline() {
    let batcher = batcher(8).await;
    let mut tasks = Vec::new();

    for _ in 0..200 {
        let batcher = batcher.clone();
        tasks.push(tokio::spawn(async move {
            batcher.query(redis::cmd("PING")).await
        }));
    }
    for task in tasks {
        task.await.expect("task finished").expect("PING succeeds");
    }

    assert!(
        batcher.pipelines_sent() >= 25,
        "{} pipelines",
        batcher.pipelines_sent()
    );
}

#[tokio::test]
async fn error_reply_fails_only_its_own_command() {
    let batcher = batcher(512).await;
    let key = common::unique_name("wrongtype");
    let mut set = redis::cmd("SET");
    set.arg(&key).arg("a string");
    batcher.query(set).await.expect("SET");

    let mut wrong = redis::cmd("HGET");
    wrong.arg(&key).arg("field");
    let mut right = redis::cmd("GET");
    right.arg(&key);
    let (wrong, right) = tokio::join!(batcher.query(wrong), batcher.query(right));

    assert!(matches!(wrong, Err(LogicError::Redis(_))), "{wrong:?}");
    assert_eq!(
        right.expect("GET succeeds"),
        Value::BulkString(b"a string".to_vec())
    );
    let mut cleanup = redis::cmd("DEL");
    cleanup.arg(&key);
    batcher.query(cleanup).await.expect("DEL");
}

#[tokio::test]
async fn query_many_uses_one_pipeline() {
    let batcher = batcher(8).await;
    let key = common::unique_name("many");
    let mut set = redis::cmd("SET");
    set.arg(&key).arg("a string");
    batcher.query(set).await.expect("SET");
    let pipelines_before = batcher.pipelines_sent();

    // 20 commands, more than batch_max, with an error reply in the middle.
    let cmds = (0..20)
        .map(|i| {
            if i == 10 {
                let mut wrong = redis::cmd("HGET");
                wrong.arg(&key).arg("field");
                wrong
            } else {
                let mut echo = redis::cmd("ECHO");
                echo.arg(i);
                echo
            }
        })
        .collect();
    let replies = batcher.query_many(cmds).await;

    assert_eq!(batcher.pipelines_sent() - pipelines_before, 1);
    assert_eq!(replies.len(), 20);
    for (i, reply) in replies.into_iter().enumerate() {
        if i == 10 {
            assert!(matches!(reply, Err(LogicError::Redis(_))), "{reply:?}");
        } else {
            let echoed = reply.expect("ECHO succeeds");
            assert_eq!(echoed, Value::BulkString(i.to_string().into_bytes()));
        }
    }
    assert!(batcher.query_many(Vec::new()).await.is_empty());
    let mut cleanup = redis::cmd("DEL");
    cleanup.arg(&key);
    batcher.query(cleanup).await.expect("DEL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_commands_and_groups_share_pipelines() {
    let batcher = batcher(64).await;
    let mut tasks = Vec::new();

    for i in 0..200usize {
        let batcher = batcher.clone();
        tasks.push(tokio::spawn(async move {
            if i % 10 == 0 {
                let cmds = (0..30).map(|_| redis::cmd("PING")).collect();
                batcher.query_many(cmds).await
            } else {
                vec![batcher.query(redis::cmd("PING")).await]
            }
        }));
    }
    for task in tasks {
        for reply in task.await.expect("task finished") {
            assert_eq!(
                reply.expect("PING succeeds"),
                Value::SimpleString("PONG".into())
            );
        }
    }

    assert_eq!(batcher.commands_sent(), 180 + 20 * 30);
}

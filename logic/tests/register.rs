//! REGISTER through `DeviceIntService` and `LogicExtService`.

mod common;

use common::{error_code, register, unique_name, TestLogic, PASSWORD};
use im_proto::v1::logic_ext_service_client::LogicExtServiceClient;
use im_proto::v1::{ErrorCode, RegisterRequest};
use tonic::Code;

fn request(username: &str, password: &str) -> RegisterRequest {
    RegisterRequest {
        username: username.to_owned(),
        password: password.to_owned(),
        open: false,
    }
}

#[tokio::test]
async fn register_new_user_returns_distinct_ids() {
    let mut logic = TestLogic::start_default().await;

    let first = register(&mut logic.client, &unique_name("reg")).await;
    let second = register(&mut logic.client, &unique_name("reg")).await;

    assert!(first > 0);
    assert!(second > 0);
    assert_ne!(first, second);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn register_duplicate_username_is_taken() {
    let mut logic = TestLogic::start_default().await;
    let username = unique_name("dup");
    register(&mut logic.client, &username).await;

    let status = logic
        .client
        .register(request(&username, "another password"))
        .await
        .expect_err("duplicate rejected");

    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(error_code(&status), ErrorCode::UsernameTaken);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn register_taken_error_names_the_username() {
    let mut logic = TestLogic::start_default().await;
    let username = unique_name("named");
    register(&mut logic.client, &username).await;
    let upper = username.to_uppercase();

    let status = logic
        .client
        .register(request(&upper, "another password"))
        .await
        .expect_err("taken");

    assert_eq!(error_code(&status), ErrorCode::UsernameTaken);
    assert!(status.message().contains(&upper), "{}", status.message());
    logic.server.shutdown().await;
}

#[tokio::test]
async fn register_username_in_other_case_is_taken() {
    let mut logic = TestLogic::start_default().await;
    let username = unique_name("case");
    register(&mut logic.client, &username).await;

    let status = logic
        .client
        .register(request(&username.to_uppercase(), "another password"))
        .await
        .expect_err("same name in upper case rejected");

    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(error_code(&status), ErrorCode::UsernameTaken);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn register_invalid_usernames_are_rejected() {
    let mut logic = TestLogic::start_default().await;
    let cases = [
        "",
        "ab",
        &"x".repeat(33),
        "white space",
        "naïve",
        "semi;colon",
    ];

    for username in cases {
        let status = logic
            .client
            .register(request(username, PASSWORD))
            .await
            .expect_err("invalid username rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{username:?}");
        assert_eq!(
            error_code(&status),
            ErrorCode::InvalidArgument,
            "{username:?}"
        );
        assert!(
            status.message().contains("username"),
            "{}",
            status.message()
        );
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn register_invalid_passwords_are_rejected() {
    let mut logic = TestLogic::start_default().await;

    for password in ["", "1234567", &"p".repeat(129)] {
        let status = logic
            .client
            .register(request(&unique_name("pw"), password))
            .await
            .expect_err("invalid password rejected");
        assert_eq!(
            error_code(&status),
            ErrorCode::InvalidArgument,
            "{} bytes",
            password.len()
        );
        assert!(
            status.message().contains("password"),
            "{}",
            status.message()
        );
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn register_stores_an_argon2id_hash_not_the_password() {
    let mut logic = TestLogic::start_default().await;
    let username = unique_name("hash");
    register(&mut logic.client, &username).await;

    let (client, connection) =
        tokio_postgres::connect(&common::database_url(), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL reachable");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT password_hash FROM users WHERE username = $1",
            &[&username],
        )
        .await
        .expect("user row");
    let hash: String = row.get(0);

    assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{hash}");
    assert!(!hash.contains(PASSWORD));
    logic.server.shutdown().await;
}

#[tokio::test]
async fn ext_service_register_shares_the_user_table() {
    let logic = TestLogic::start_default().await;
    let address = format!("http://{}", logic.server.local_addr());
    let mut ext = LogicExtServiceClient::connect(address)
        .await
        .expect("client connects");
    let username = unique_name("ext");

    let reply = ext
        .register(request(&username, PASSWORD))
        .await
        .expect("registration succeeds")
        .into_inner();
    let again = ext
        .register(request(&username, PASSWORD))
        .await
        .expect_err("duplicate rejected");

    assert!(reply.user_id > 0);
    assert_eq!(error_code(&again), ErrorCode::UsernameTaken);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn names_reject_bidirectional_controls() {
    let mut logic = TestLogic::start_default().await;
    // Usernames allow ASCII only, which keeps these characters out.
    let status = logic
        .client
        .register(request("admin\u{202e}nimda", PASSWORD))
        .await
        .expect_err("a username with an override");
    common::assert_invalid(&status, "username", "username");

    // The device info that a new user's first LOGIN stores.
    let username = unique_name("bidi");
    let user_id = register(&mut logic.client, &username).await;
    let info = |platform: &str, model: &str, app_version: &str| im_proto::v1::DeviceInfo {
        platform: platform.to_owned(),
        model: model.to_owned(),
        app_version: app_version.to_owned(),
    };
    let cases = [
        (
            info("web\u{202e}", "m", "1"),
            "device.platform",
            "U+202E at character 3",
        ),
        (
            info("web", "\u{2066}model", "1"),
            "device.model",
            "U+2066 at character 0",
        ),
        (
            info("web", "m", "1.\u{200e}0"),
            "device.app_version",
            "U+200E at character 2",
        ),
    ];
    for (device, field, named) in cases {
        let login = im_proto::v1::ConnLoginRequest {
            login: Some(im_proto::v1::LoginRequest {
                username: username.clone(),
                password: PASSWORD.to_owned(),
                device_id: 0,
                device: Some(device),
            }),
            conn: Some(common::conn(common::NODE, 1)),
            client_addr: "127.0.0.1:40000".to_owned(),
        };
        let status = logic.client.conn_login(login).await.expect_err(field);
        common::assert_invalid(&status, field, field);
        assert!(status.message().contains(named), "{}", status.message());
    }
    let user_id = i64::try_from(user_id).expect("bigint id");
    let devices: i64 = common::postgres()
        .await
        .query_one(
            "SELECT count(*) FROM devices WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .expect("count devices")
        .get(0);
    assert_eq!(devices, 0, "no rejected login stored a device");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn register_burst_past_the_hash_limit_is_busy() {
    // One hash at a time, each long enough that the burst cannot finish within the wait.
    let mut logic = TestLogic::start(im_logic::Config {
        max_password_hashes: 1,
        password_hash_wait_ms: 100,
        ..common::test_config()
    })
    .await;
    const CALLS: usize = 48;
    let usernames: Vec<String> = (0..CALLS).map(|_| unique_name("burst")).collect();
    let started = std::time::Instant::now();
    let calls = usernames.iter().map(|username| {
        let mut client = logic.client.clone();
        let username = username.clone();
        tokio::spawn(async move { client.register(request(&username, PASSWORD)).await })
    });
    let results: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|joined| joined.expect("task"))
        .collect();
    let elapsed = started.elapsed();

    let mut registered = Vec::new();
    let mut rejected = 0;
    for (username, result) in usernames.iter().zip(&results) {
        match result {
            Ok(_) => registered.push(username),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(error_code(status), ErrorCode::Busy, "{status:?}");
                let expected = "the server is busy hashing passwords: the 1 password hash \
                                place (max_password_hashes) is busy, and it did not come free \
                                within 100 ms (password_hash_wait_ms); retry after a pause of \
                                about 100 ms";
                assert_eq!(status.message(), expected);
                rejected += 1;
            }
        }
    }
    println!(
        "{} registered, {rejected} rejected in {elapsed:?}",
        registered.len()
    );
    assert!(!registered.is_empty(), "every call was rejected");
    assert!(rejected > 0, "no call was rejected");

    // Every registered user logs in; a rejected name was not stored and can register later.
    for (index, username) in registered.iter().enumerate() {
        let login = common::login(
            &mut logic.client,
            username,
            0,
            common::conn(common::NODE, index as u64 + 1),
        )
        .await;
        assert!(login.is_ok(), "{username}: {login:?}");
    }
    let rejected_name = usernames
        .iter()
        .zip(&results)
        .find(|(_, result)| result.is_err())
        .map(|(username, _)| username)
        .expect("a rejected name");
    register(&mut logic.client, rejected_name).await;
    logic.server.shutdown().await;
}

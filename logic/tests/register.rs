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

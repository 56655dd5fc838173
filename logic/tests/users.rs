//! User look-ups and the authentication of `LogicExtService` calls from request metadata.

mod common;

use common::{as_device, conn, error_code, new_user_device, TestLogic, NODE};
use im_proto::v1::{ErrorCode, FindUserRequest, GetUserRequest, ListGroupsRequest};
use tonic::Code;

#[tokio::test]
async fn get_and_find_user_show_the_open_flag() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let (_, caller) = new_user_device(&mut logic.client, "looker", false, conn(NODE, 1)).await;
    let (open_name, open) = new_user_device(&mut logic.client, "open", true, conn(NODE, 2)).await;

    let by_id = ext
        .get_user(as_device(
            &caller,
            GetUserRequest {
                user_id: open.user_id,
            },
        ))
        .await
        .expect("get user")
        .into_inner();
    let by_name = ext
        .find_user(as_device(
            &caller,
            FindUserRequest {
                username: open_name.clone(),
            },
        ))
        .await
        .expect("find user")
        .into_inner();
    let closed = ext
        .get_user(as_device(
            &caller,
            GetUserRequest {
                user_id: caller.user_id,
            },
        ))
        .await
        .expect("get self")
        .into_inner();

    let by_other_case = ext
        .find_user(as_device(
            &caller,
            FindUserRequest {
                username: open_name.to_uppercase(),
            },
        ))
        .await
        .expect("find user in upper case")
        .into_inner();

    assert_eq!(by_id, by_name);
    assert_eq!(by_other_case, by_name, "look-ups ignore letter case");
    assert_eq!(by_id.user_id, open.user_id);
    assert_eq!(by_id.username, open_name);
    assert!(by_id.open, "registered as open");
    assert!(by_id.created_at_ms > 1_600_000_000_000);
    assert!(!closed.open, "registered without open");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn unknown_users_are_not_found() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let (_, caller) = new_user_device(&mut logic.client, "seeker", false, conn(NODE, 1)).await;

    let by_id = ext
        .get_user(as_device(
            &caller,
            GetUserRequest {
                user_id: i64::MAX as u64,
            },
        ))
        .await
        .expect_err("unknown id");
    let by_name = ext
        .find_user(as_device(
            &caller,
            FindUserRequest {
                username: "nobody_by_this_name".to_owned(),
            },
        ))
        .await
        .expect_err("unknown name");
    let malformed = ext
        .find_user(as_device(
            &caller,
            FindUserRequest {
                username: "no spaces".to_owned(),
            },
        ))
        .await
        .expect_err("malformed name");

    assert_eq!(by_id.code(), Code::NotFound);
    assert_eq!(error_code(&by_id), ErrorCode::NotFound);
    assert_eq!(error_code(&by_name), ErrorCode::NotFound);
    assert_eq!(error_code(&malformed), ErrorCode::InvalidArgument);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn calls_without_valid_credentials_are_unauthenticated() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let (_, device) = new_user_device(&mut logic.client, "creds", false, conn(NODE, 1)).await;
    let (_, other) = new_user_device(&mut logic.client, "creds", false, conn(NODE, 2)).await;
    let wrong_token = im_proto::v1::LoginReply {
        token: "0".repeat(64),
        ..device.clone()
    };
    let foreign_device = im_proto::v1::LoginReply {
        device_id: other.device_id,
        ..device.clone()
    };
    let cases = [
        (
            tonic::Request::new(ListGroupsRequest {}),
            ErrorCode::TokenInvalid,
            "no metadata",
        ),
        (
            as_device(&wrong_token, ListGroupsRequest {}),
            ErrorCode::TokenInvalid,
            "wrong token",
        ),
        (
            as_device(&foreign_device, ListGroupsRequest {}),
            ErrorCode::DeviceUnknown,
            "another user's device",
        ),
    ];

    for (request, expected, case) in cases {
        let status = ext.list_groups(request).await.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}");
        assert_eq!(error_code(&status), expected, "{case}");
    }
    let mut missing_token = as_device(&device, ListGroupsRequest {});
    missing_token.metadata_mut().remove("im-token");
    let status = ext.list_groups(missing_token).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("im-token"),
        "{}",
        status.message()
    );
    ext.list_groups(as_device(&device, ListGroupsRequest {}))
        .await
        .expect("valid credentials pass");
    logic.server.shutdown().await;
}

//! A wrapper of the generated gRPC servers that rejects a request tonic cannot decode with
//! INVALID_ARGUMENT instead of INTERNAL.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use im_proto::v1::ErrorCode;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::error::LogicError;
use crate::metrics::{Method, Recorder};

/// Start of the text of prost's `DecodeError`, which tonic-prost 0.14 (`from_decode_error`)
/// returns with code INTERNAL when a request message does not decode.
const DECODE_ERROR_PREFIX: &str = "failed to decode Protobuf message";

/// Text of the INTERNAL status that tonic 0.14 (`Grpc::map_request_unary`) returns when the
/// request body ends before it contains one message.
const MISSING_MESSAGE: &str = "Missing request message.";

/// Text of the INTERNAL status that tonic 0.14 (`Streaming::poll_frame`) returns when the
/// request body ends inside a message header or a message.
const TRUNCATED_BODY: &str = "Unexpected EOF decoding stream.";

/// Start of the text of the INTERNAL statuses that tonic 0.14 (`StreamingInner::decode_chunk`)
/// returns for a message header whose compressed-flag is neither 0 nor 1, or is 1 in a request
/// without `grpc-encoding`. For the latter, tonic cites gRPC's compression document, which
/// requires INTERNAL, but here it is the caller's error like an undecodable message.
const BAD_COMPRESSED_FLAG_PREFIX: &str = "protocol error: received message with";

/// A generated server that rejects a request with INVALID_ARGUMENT and the `im-error-code` of
/// every other rejected call when its body is empty or is not gRPC's length-prefixed messages.
/// It does the same when the message does not decode (not valid protobuf, or a string field
/// that is not UTF-8). tonic returns INTERNAL without an error code there, citing gRPC's table
/// of status codes. But the caller sent the bad request and is the one to fix it.
#[derive(Clone)]
pub struct RejectBadRequests<S> {
    inner: S,
    /// Counts the rejected requests, which never reach a handler.
    metrics: Arc<Recorder>,
}

impl<S> RejectBadRequests<S> {
    /// Wraps `inner`, counting each rejected request in `metrics`.
    pub fn new(inner: S, metrics: Arc<Recorder>) -> Self {
        Self { inner, metrics }
    }
}

impl<S: NamedService> NamedService for RejectBadRequests<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for RejectBadRequests<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let call = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = call.await?;
            let Some(rejection) = reject_bad_request(&path, &response) else {
                return Ok(response);
            };
            if let Some(method) = method_of(&path) {
                metrics.record_request(method, ErrorCode::InvalidArgument, started.elapsed());
            }
            Ok(rejection)
        })
    }
}

/// Returns the method named by a request path such as `/im.v1.LogicExtService/FindUser`.
fn method_of(path: &str) -> Option<Method> {
    let name = path.rsplit('/').next()?;
    Method::ALL.into_iter().find(|method| method.name() == name)
}

/// Returns INVALID_ARGUMENT for a trailers-only response that reports an empty request body,
/// a body that is not length-prefixed messages, or an undecodable request message, and `None`
/// for every other response, which goes out unchanged. tonic rejects such a request before the
/// handler runs, so the response carries its status in the headers.
fn reject_bad_request(path: &str, response: &http::Response<Body>) -> Option<http::Response<Body>> {
    let headers = response.headers();
    if headers.get("grpc-status").map(|value| value.as_bytes()) != Some(b"13") {
        return None;
    }
    let status = Status::from_header_map(headers)?;
    if status.code() != Code::Internal {
        return None;
    }
    let err = if status.message() == MISSING_MESSAGE {
        LogicError::EmptyRequest
    } else if status.message().starts_with(DECODE_ERROR_PREFIX) {
        LogicError::Undecodable(status.message().to_owned())
    } else if status.message() == TRUNCATED_BODY
        || status.message().starts_with(BAD_COMPRESSED_FLAG_PREFIX)
    {
        LogicError::InvalidFraming(status.message().to_owned())
    } else {
        return None;
    };
    tracing::debug!(path, error = %err, "request rejected before its handler");
    Some(Status::from(err).into_http())
}

//! Metrics of the logic tier in the Prometheus text format.
//!
//! Request handlers write counters and fixed-bucket histograms in a [`Recorder`] with relaxed
//! atomic adds, so recording an event takes no lock and allocates nothing. Gauges of the
//! stores (pool connections, Redis pipeline counters, password hashes in flight) are read at
//! scrape time. [`LogicMetrics::render`] writes everything, and [`http`] serves it on
//! `GET /metrics`.

pub mod http;
mod render;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use im_proto::v1::ErrorCode;

use crate::password::PasswordHasher;
use crate::store::pg::PgStore;
use crate::store::redis_batch::PipelineCounters;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Count per bucket of `LATENCY_BUCKETS`, plus one for larger values.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// gRPC methods of `DeviceIntService` and `LogicExtService`, as the `method` label.
///
/// Both services have a `Register` method; they run the same code and share one label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Register,
    ConnLogin,
    ConnSignIn,
    Offline,
    Send,
    Sync,
    Ack,
    GetUser,
    FindUser,
    RequestFriend,
    AcceptFriend,
    ListFriends,
    RemoveFriend,
    CreateGroup,
    AddGroupMembers,
    RemoveGroupMembers,
    ListGroups,
    GetGroup,
    ServerSend,
    /// `DeviceIntService.Logout` and `LogicExtService.Logout` share this label.
    Logout,
    KickDevice,
    RenewLease,
    RestoreOnline,
    AckMany,
    SendMany,
    ConnSignInMany,
    OfflineMany,
}

impl Method {
    /// Every method, in label order; `ALL[m as usize] == m`.
    pub const ALL: [Method; 27] = [
        Method::Register,
        Method::ConnLogin,
        Method::ConnSignIn,
        Method::Offline,
        Method::Send,
        Method::Sync,
        Method::Ack,
        Method::GetUser,
        Method::FindUser,
        Method::RequestFriend,
        Method::AcceptFriend,
        Method::ListFriends,
        Method::RemoveFriend,
        Method::CreateGroup,
        Method::AddGroupMembers,
        Method::RemoveGroupMembers,
        Method::ListGroups,
        Method::GetGroup,
        Method::ServerSend,
        Method::Logout,
        Method::KickDevice,
        Method::RenewLease,
        Method::RestoreOnline,
        Method::AckMany,
        Method::SendMany,
        Method::ConnSignInMany,
        Method::OfflineMany,
    ];

    /// Returns the method's name as the .proto file spells it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Register => "Register",
            Method::ConnLogin => "ConnLogin",
            Method::ConnSignIn => "ConnSignIn",
            Method::Offline => "Offline",
            Method::Send => "Send",
            Method::Sync => "Sync",
            Method::Ack => "Ack",
            Method::GetUser => "GetUser",
            Method::FindUser => "FindUser",
            Method::RequestFriend => "RequestFriend",
            Method::AcceptFriend => "AcceptFriend",
            Method::ListFriends => "ListFriends",
            Method::RemoveFriend => "RemoveFriend",
            Method::CreateGroup => "CreateGroup",
            Method::AddGroupMembers => "AddGroupMembers",
            Method::RemoveGroupMembers => "RemoveGroupMembers",
            Method::ListGroups => "ListGroups",
            Method::GetGroup => "GetGroup",
            Method::ServerSend => "ServerSend",
            Method::Logout => "Logout",
            Method::KickDevice => "KickDevice",
            Method::RenewLease => "RenewLease",
            Method::RestoreOnline => "RestoreOnline",
            Method::AckMany => "AckMany",
            Method::SendMany => "SendMany",
            Method::ConnSignInMany => "ConnSignInMany",
            Method::OfflineMany => "OfflineMany",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether the method signs a connection in (LOGIN or SIGN_IN on an engine node).
    fn signs_in(self) -> bool {
        matches!(self, Method::ConnLogin | Method::ConnSignIn)
    }
}

/// Result codes of the logic tier's calls, as the `code` label (the `ErrorCode` name).
pub const CODES: [ErrorCode; 24] = [
    ErrorCode::Ok,
    ErrorCode::InvalidArgument,
    ErrorCode::InvalidCredentials,
    ErrorCode::TokenInvalid,
    ErrorCode::TokenExpired,
    ErrorCode::TokenRevoked,
    ErrorCode::DeviceUnknown,
    ErrorCode::DeviceNotOwned,
    ErrorCode::UsernameTaken,
    ErrorCode::Unavailable,
    ErrorCode::Timeout,
    ErrorCode::Internal,
    ErrorCode::ReceiverNotFound,
    ErrorCode::NotFriend,
    ErrorCode::NotGroupMember,
    ErrorCode::ContentEmpty,
    ErrorCode::ContentTooLarge,
    ErrorCode::GroupFull,
    ErrorCode::PermissionDenied,
    ErrorCode::AlreadyExists,
    ErrorCode::NotFound,
    ErrorCode::TooManyGroups,
    ErrorCode::TooManyFriends,
    ErrorCode::Busy,
];

/// Returns the position of `code` in [`CODES`].
fn code_index(code: ErrorCode) -> usize {
    match code {
        ErrorCode::Ok => 0,
        ErrorCode::InvalidArgument => 1,
        ErrorCode::InvalidCredentials => 2,
        ErrorCode::TokenInvalid => 3,
        ErrorCode::TokenExpired => 4,
        ErrorCode::TokenRevoked => 5,
        ErrorCode::DeviceUnknown => 6,
        ErrorCode::DeviceNotOwned => 7,
        ErrorCode::UsernameTaken => 8,
        ErrorCode::Unavailable => 9,
        ErrorCode::Timeout => 10,
        ErrorCode::Internal => 11,
        ErrorCode::ReceiverNotFound => 12,
        ErrorCode::NotFriend => 13,
        ErrorCode::NotGroupMember => 14,
        ErrorCode::ContentEmpty => 15,
        ErrorCode::ContentTooLarge => 16,
        ErrorCode::GroupFull => 17,
        ErrorCode::PermissionDenied => 18,
        ErrorCode::AlreadyExists => 19,
        ErrorCode::NotFound => 20,
        ErrorCode::TooManyGroups => 21,
        ErrorCode::TooManyFriends => 22,
        ErrorCode::Busy => 23,
        // Only the engine sends these, so a call that returned one is a fault of ours.
        ErrorCode::InvalidPacket
        | ErrorCode::UnknownType
        | ErrorCode::NotSignedIn
        | ErrorCode::AlreadySignedIn
        | ErrorCode::RateLimited => 11,
    }
}

/// Results of ConnLogin and ConnSignIn, as the `result` label of `im_logic_sign_ins_total`.
/// "rejected" covers every code a client caused (a wrong password or token, a bad request), and
/// "unavailable" a LOGIN turned away as BUSY too.
pub const SIGN_IN_RESULTS: [&str; 5] = ["ok", "rejected", "unavailable", "timeout", "internal"];

fn sign_in_result_index(code: ErrorCode) -> usize {
    match code {
        ErrorCode::Ok => 0,
        ErrorCode::Unavailable | ErrorCode::Busy => 2,
        ErrorCode::Timeout => 3,
        ErrorCode::Internal => 4,
        _ => 1,
    }
}

/// Outcomes of a Deliver call to an engine node, as the `result` label.
pub const DELIVER_RESULTS: [&str; 5] =
    ["ok", "timeout", "unavailable", "failed", "invalid_address"];

/// Outcome of one Deliver call to an engine node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverResult {
    /// The node replied.
    Ok = 0,
    /// The call ran past `engine_call_timeout_ms`.
    Timeout = 1,
    /// The node could not be reached.
    Unavailable = 2,
    /// The node returned another error status.
    Failed = 3,
    /// The node address in the online status is not a valid URI authority.
    InvalidAddress = 4,
}

/// Values of the `kind` label of the push counters, indexed by [`PushKind`].
pub const PUSH_KINDS: [&str; 2] = ["message", "notice"];

/// Content of a push: a stored message, or a notice of a friend or group change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    Message = 0,
    Notice = 1,
}

impl PushKind {
    /// Returns the kind's label, as in [`PUSH_KINDS`].
    pub fn label(self) -> &'static str {
        PUSH_KINDS[self as usize]
    }
}

/// Outcomes of the device targets of Deliver calls, as the `result` label of
/// `im_logic_push_targets_total`.
pub const PUSH_TARGET_RESULTS: [&str; 3] = ["delivered", "missed", "failed"];

/// Origin of a logout, as the `source` label of `im_logic_logouts_total`.
pub const LOGOUT_SOURCES: [&str; 2] = ["device", "api"];

/// Origin of a logout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutSource {
    /// A LOGOUT packet from the device, through its engine node.
    Device = 0,
    /// `LogicExtService.Logout` from a back end, with the device's token.
    Api = 1,
}

/// Reasons of kicks that revoke a token, as the `reason` label of `im_logic_kicks_total`.
pub const KICK_REASONS: [&str; 2] = ["logged_out", "kicked_by_server"];

/// Counters and histograms that the request handlers and push tasks write. Shared by every
/// task through an `Arc`; each update is one relaxed atomic add.
#[derive(Debug, Default)]
pub struct Recorder {
    requests: [[AtomicU64; CODES.len()]; Method::ALL.len()],
    request_seconds: [Histogram; Method::ALL.len()],
    sign_ins: [AtomicU64; SIGN_IN_RESULTS.len()],
    messages_stored: AtomicU64,
    message_copies_stored: AtomicU64,
    push_seconds: Histogram,
    deliver_calls: [AtomicU64; DELIVER_RESULTS.len()],
    push_targets: [[AtomicU64; PUSH_TARGET_RESULTS.len()]; PUSH_KINDS.len()],
    pushes_dropped: [AtomicU64; PUSH_KINDS.len()],
    status_reads_failed: [AtomicU64; PUSH_KINDS.len()],
    logouts: [AtomicU64; LOGOUT_SOURCES.len()],
    kicks: [AtomicU64; KICK_REASONS.len()],
    leases_reaped: AtomicU64,
    lease_statuses_removed: AtomicU64,
    message_copies_expired: AtomicU64,
}

impl Recorder {
    /// Counts one finished call of `method` with its result code and duration.
    pub fn record_request(&self, method: Method, code: ErrorCode, elapsed: Duration) {
        let method_index = method.index();
        self.requests[method_index][code_index(code)].fetch_add(1, Ordering::Relaxed);
        self.request_seconds[method_index].observe(elapsed);
        if method.signs_in() {
            self.sign_ins[sign_in_result_index(code)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one newly stored message and its `copies` recipient rows.
    pub fn record_message_stored(&self, copies: usize) {
        self.messages_stored.fetch_add(1, Ordering::Relaxed);
        self.message_copies_stored
            .fetch_add(copies as u64, Ordering::Relaxed);
    }

    /// Counts one Deliver call by its outcome.
    pub fn record_deliver(&self, result: DeliverResult) {
        self.deliver_calls[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the device targets of one Deliver call of `kind`: `delivered` and `missed` as
    /// the node replied, or all `failed` when the call failed.
    pub fn record_push_targets(&self, kind: PushKind, delivered: u64, missed: u64, failed: u64) {
        let counts = &self.push_targets[kind as usize];
        for (counter, count) in counts.iter().zip([delivered, missed, failed]) {
            if count > 0 {
                counter.fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    /// Counts `count` pushes of `kind` dropped before any Deliver call because a queue was
    /// full: one per message or notice and engine node, or per message of a batch not routed.
    pub fn record_pushes_dropped(&self, kind: PushKind, count: u64) {
        self.pushes_dropped[kind as usize].fetch_add(count, Ordering::Relaxed);
    }

    /// Counts `count` recipients of a message or notice of `kind` whose online status could not
    /// be read from Redis, so that none of their devices got the push.
    pub fn record_status_reads_failed(&self, kind: PushKind, count: u64) {
        self.status_reads_failed[kind as usize].fetch_add(count, Ordering::Relaxed);
    }

    /// Counts one logout that revoked a token.
    pub fn record_logout(&self, source: LogoutSource) {
        self.logouts[source as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `connections` that got KICKED because their token was revoked; `by_server` is
    /// true for KickDevice and false for a logout.
    pub fn record_kicks(&self, by_server: bool, connections: u64) {
        self.kicks[usize::from(by_server)].fetch_add(connections, Ordering::Relaxed);
    }

    /// Counts one node lease found lapsed by the reaper.
    pub fn record_lease_reaped(&self) {
        self.leases_reaped.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts online statuses removed because their node's lease lapsed or its incarnation
    /// changed.
    pub fn record_lease_statuses_removed(&self, count: u64) {
        self.lease_statuses_removed
            .fetch_add(count, Ordering::Relaxed);
    }

    /// Counts message copies deleted because they passed `message_retention_days`.
    pub fn record_message_copies_expired(&self, count: u64) {
        self.message_copies_expired
            .fetch_add(count, Ordering::Relaxed);
    }

    /// Records the time from a send's reply until an engine node replied to its Deliver call.
    pub fn observe_push(&self, elapsed: Duration) {
        self.push_seconds.observe(elapsed);
    }
}

/// Every metric source of one logic server, for rendering. Cheap to clone.
#[derive(Clone)]
pub struct LogicMetrics {
    /// Events recorded by the handlers.
    recorder: Arc<Recorder>,
    /// Pipelines and commands the Redis batcher has sent.
    redis: Arc<PipelineCounters>,
    /// The PostgreSQL pool, whose status is read at each scrape.
    pg: PgStore,
    /// The password hasher, whose hashes in flight are read at each scrape.
    passwords: PasswordHasher,
}

impl LogicMetrics {
    /// Collects the sources that [`LogicMetrics::render`] reads.
    pub fn new(
        recorder: Arc<Recorder>,
        redis: Arc<PipelineCounters>,
        pg: PgStore,
        passwords: PasswordHasher,
    ) -> LogicMetrics {
        LogicMetrics {
            recorder,
            redis,
            pg,
            passwords,
        }
    }

    /// Returns the recorder that handlers write to.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_indexed_in_order() {
        for (index, method) in Method::ALL.iter().enumerate() {
            assert_eq!(method.index(), index, "{}", method.name());
        }
        for (index, code) in CODES.iter().enumerate() {
            assert_eq!(code_index(*code), index, "{code:?}");
        }
    }

    #[test]
    fn engine_only_codes_count_as_internal() {
        let internal = code_index(ErrorCode::Internal);

        assert_eq!(code_index(ErrorCode::InvalidPacket), internal);
        assert_eq!(code_index(ErrorCode::AlreadySignedIn), internal);
    }
}

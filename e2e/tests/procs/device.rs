//! A device as a task: it owns its connection and its [`Inbox`], reconnects by itself when the
//! connection is lost, signs in again (logging in with its password when the token is gone),
//! resyncs, and sends on request. Tests drive devices through [`Device`] handles.

use std::sync::Arc;
use std::time::Duration;

use im_client::inbox::Inbox;
use im_client::{Client, ClientError, ConversationType, ErrorCode, InboxError, Message, SendReply};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::system::{connect_options, test_device, Account};
use super::PASSWORD;

/// Wait between two attempts to get online.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);
/// Wait after a failed SYNC or MESSAGE_ACK on a connection that is still open.
const REQUEST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// SYNC page size of the final check from seq 0.
const CHECK_PAGE: u32 = 200;

/// What became of one SEND.
#[derive(Debug, Clone)]
pub enum SendOutcome {
    /// The server stored the message and replied with its id and seq.
    Accepted(SendReply),
    /// The server replied with an error code.
    Rejected(ErrorCode),
    /// No reply within the client's time limit.
    ClientTimeout,
    /// The connection closed before the reply.
    ConnectionLost(String),
    /// The device could not get online to send.
    Offline(String),
    /// Any other failure.
    Failed(String),
}

impl SendOutcome {
    pub fn reply(&self) -> Option<&SendReply> {
        match self {
            SendOutcome::Accepted(reply) => Some(reply),
            _ => None,
        }
    }

    /// A short label for tallies.
    pub fn label(&self) -> String {
        match self {
            SendOutcome::Accepted(_) => "accepted".to_owned(),
            SendOutcome::Rejected(code) => format!("{code:?}"),
            SendOutcome::ClientTimeout => "client-timeout".to_owned(),
            SendOutcome::ConnectionLost(_) => "connection-lost".to_owned(),
            SendOutcome::Offline(_) => "offline".to_owned(),
            SendOutcome::Failed(_) => "failed".to_owned(),
        }
    }
}

/// One SEND's outcome and how long the device waited for it.
#[derive(Debug, Clone)]
pub struct SendResult {
    pub outcome: SendOutcome,
    pub elapsed: Duration,
}

/// What a device saw over its life.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Connections that ended without the device asking (server close, crash, kick).
    pub lost_connections: u32,
    /// Successful connects with sign-in, the first one included.
    pub sign_ins: u32,
    /// Sign-ins that needed LOGIN because the token was rejected, with the rejection codes.
    pub relogins: Vec<ErrorCode>,
    /// Attempts to get online that failed.
    pub failed_attempts: u32,
    /// Close codes of the lost connections.
    pub close_codes: Vec<u16>,
}

/// The final state of a device.
#[derive(Debug, Clone)]
pub struct DeviceReport {
    pub user: usize,
    pub account: Account,
    /// Every message the inbox delivered, in delivery order.
    pub inbox: Vec<Message>,
    /// The user's messages from SYNC from seq 0 at the end.
    pub synced: Vec<Message>,
    pub counters: Counters,
}

enum Command {
    Send {
        receiver_id: u64,
        client_msg_id: String,
        content: String,
        reply: oneshot::Sender<SendResult>,
    },
    Online {
        deadline: Instant,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Reconnect {
        deadline: Instant,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Finish {
        deadline: Instant,
        reply: oneshot::Sender<Result<DeviceReport, String>>,
    },
}

/// A handle on a device task.
#[derive(Clone)]
pub struct Device {
    pub user: usize,
    pub user_id: u64,
    pub device_id: u64,
    commands: mpsc::Sender<Command>,
}

impl Device {
    /// Starts the task of `account`'s device. It connects to `urls` in turn, moving to the next
    /// one after a failed attempt; it goes online when first asked to.
    pub fn spawn(user: usize, account: Account, urls: Arc<Vec<String>>) -> Device {
        let (commands, receiver) = mpsc::channel(64);
        let device = Device {
            user,
            user_id: account.user_id(),
            device_id: account.device_id(),
            commands,
        };
        let task = DeviceTask {
            user,
            inbox: Inbox::new(account.user_id(), account.device_id()).with_page_limit(50),
            account,
            urls,
            url_index: 0,
            client: None,
            retry_at: None,
            delivered: Vec::new(),
            counters: Counters::default(),
        };
        tokio::spawn(task.run(receiver));
        device
    }

    /// Sends a direct message to `receiver_id` with the given `client_msg_id`.
    pub async fn send(&self, receiver_id: u64, client_msg_id: &str, content: String) -> SendResult {
        let (reply, result) = oneshot::channel();
        let command = Command::Send {
            receiver_id,
            client_msg_id: client_msg_id.to_owned(),
            content,
            reply,
        };
        self.commands.send(command).await.expect("device task runs");
        result.await.expect("device task replies")
    }

    /// Gets online (connect, sign in, resync) unless already online, retrying until `within`
    /// has passed.
    pub async fn online(&self, within: Duration) -> Result<(), String> {
        let (reply, result) = oneshot::channel();
        let deadline = Instant::now() + within;
        self.commands
            .send(Command::Online { deadline, reply })
            .await
            .expect("device task runs");
        result.await.expect("device task replies")
    }

    /// Closes the connection with a close handshake and gets online again on a new one.
    pub async fn reconnect(&self, within: Duration) -> Result<(), String> {
        let (reply, result) = oneshot::channel();
        let deadline = Instant::now() + within;
        self.commands
            .send(Command::Reconnect { deadline, reply })
            .await
            .expect("device task runs");
        result.await.expect("device task replies")
    }

    /// Gets online, resyncs, reads SYNC from seq 0, closes, and ends the task.
    pub async fn finish(&self, within: Duration) -> Result<DeviceReport, String> {
        let (reply, result) = oneshot::channel();
        let deadline = Instant::now() + within;
        self.commands
            .send(Command::Finish { deadline, reply })
            .await
            .expect("device task runs");
        result.await.expect("device task replies")
    }
}

enum Wake {
    Command(Option<Command>),
    Received(Result<Vec<Message>, InboxError>),
    Retry,
}

struct DeviceTask {
    user: usize,
    account: Account,
    urls: Arc<Vec<String>>,
    url_index: usize,
    client: Option<Client>,
    /// When to try to get online again after losing the connection; `None` stays offline
    /// until a command needs the connection.
    retry_at: Option<Instant>,
    inbox: Inbox,
    delivered: Vec<Message>,
    counters: Counters,
}

impl DeviceTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let wake = match (&self.client, self.retry_at) {
                (Some(client), _) => tokio::select! {
                    command = commands.recv() => Wake::Command(command),
                    received = self.inbox.recv(client) => Wake::Received(received),
                },
                (None, Some(at)) => tokio::select! {
                    command = commands.recv() => Wake::Command(command),
                    () = tokio::time::sleep_until(at) => Wake::Retry,
                },
                (None, None) => Wake::Command(commands.recv().await),
            };
            match wake {
                Wake::Command(None) => return,
                Wake::Command(Some(Command::Finish { deadline, reply })) => {
                    let _ = reply.send(self.finish(deadline).await);
                    return;
                }
                Wake::Command(Some(command)) => self.handle(command).await,
                Wake::Received(Ok(messages)) => self.delivered.extend(messages),
                Wake::Received(Err(error)) => self.after_failed_request(&error).await,
                Wake::Retry => {
                    let _ = self.go_online().await;
                }
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Send {
                receiver_id,
                client_msg_id,
                content,
                reply,
            } => {
                let result = self.send(receiver_id, &client_msg_id, content).await;
                let _ = reply.send(result);
            }
            Command::Online { deadline, reply } => {
                let _ = reply.send(self.online_by(deadline).await);
            }
            Command::Reconnect { deadline, reply } => {
                if let Some(client) = self.client.take() {
                    // A close that fails still ends the connection, when the client drops.
                    let _ = client.close().await;
                }
                let _ = reply.send(self.online_by(deadline).await);
            }
            Command::Finish { .. } => unreachable!("handled by run"),
        }
    }

    async fn send(&mut self, receiver_id: u64, client_msg_id: &str, content: String) -> SendResult {
        let start = Instant::now();
        if let Err(error) = self.go_online().await {
            return SendResult {
                outcome: SendOutcome::Offline(error),
                elapsed: start.elapsed(),
            };
        }
        let client = self.client.as_ref().expect("online");
        let result = self
            .inbox
            .send(
                client,
                ConversationType::User,
                receiver_id,
                content,
                "text/plain",
                client_msg_id,
            )
            .await;
        let outcome = match result {
            Ok(reply) => SendOutcome::Accepted(reply),
            Err(InboxError::Client(ClientError::Server { code, .. })) => {
                SendOutcome::Rejected(code)
            }
            Err(InboxError::Client(ClientError::Timeout)) => SendOutcome::ClientTimeout,
            Err(error) => {
                let text = error.to_string();
                if self.connection_gone(&error) {
                    self.lose_connection();
                    SendOutcome::ConnectionLost(text)
                } else {
                    SendOutcome::Failed(text)
                }
            }
        };
        SendResult {
            outcome,
            elapsed: start.elapsed(),
        }
    }

    /// Handles a failed SYNC or MESSAGE_ACK of the inbox, or the end of the connection.
    async fn after_failed_request(&mut self, error: &InboxError) {
        if self.connection_gone(error) {
            self.lose_connection();
        } else {
            tracing::debug!(device_id = self.account.device_id(), %error, "inbox request failed");
            tokio::time::sleep(REQUEST_RETRY_DELAY).await;
        }
    }

    fn connection_gone(&self, error: &InboxError) -> bool {
        let closed = self
            .client
            .as_ref()
            .is_none_or(|client| client.close_frame().is_some());
        closed
            || matches!(
                error,
                InboxError::Kicked { .. } | InboxError::Client(ClientError::Closed { .. })
            )
    }

    fn lose_connection(&mut self) {
        if let Some(client) = self.client.take() {
            let code = client.close_frame().map(|(code, _)| code).unwrap_or(0);
            self.counters.close_codes.push(code);
            self.counters.lost_connections += 1;
        }
        self.retry_at = Some(Instant::now() + RECONNECT_DELAY);
    }

    async fn online_by(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            match self.go_online().await {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => tokio::time::sleep(RECONNECT_DELAY).await,
            }
        }
    }

    /// Connects, signs in and resyncs, unless online already. A failure moves on to the next
    /// engine address and schedules another attempt.
    async fn go_online(&mut self) -> Result<(), String> {
        if self.client.is_some() {
            return Ok(());
        }
        let url = self.urls[self.url_index % self.urls.len()].clone();
        match self.connect_and_sign_in(&url).await {
            Ok(client) => {
                self.client = Some(client);
                self.retry_at = None;
                self.counters.sign_ins += 1;
                Ok(())
            }
            Err(error) => {
                self.url_index += 1;
                self.counters.failed_attempts += 1;
                self.retry_at = Some(Instant::now() + RECONNECT_DELAY);
                Err(format!("{url}: {error}"))
            }
        }
    }

    async fn connect_and_sign_in(&mut self, url: &str) -> Result<Client, String> {
        let client = Client::connect(url, &connect_options())
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let signed_in = client
            .sign_in(
                self.account.user_id(),
                self.account.device_id(),
                &self.account.login.token,
            )
            .await;
        match signed_in {
            Ok(_) => {}
            Err(ClientError::Server { code, .. }) if token_rejected(code) => {
                self.log_in_again(&client).await?;
                self.counters.relogins.push(code);
            }
            Err(error) => return Err(format!("sign-in: {error}")),
        }
        let synced = self
            .inbox
            .resync(&client)
            .await
            .map_err(|error| format!("resync: {error}"))?;
        self.delivered.extend(synced);
        Ok(client)
    }

    /// LOGIN with the password, keeping the device id; the connection is then signed in.
    async fn log_in_again(&mut self, client: &Client) -> Result<(), String> {
        let login = client
            .login(
                &self.account.username,
                PASSWORD,
                self.account.device_id(),
                test_device(),
            )
            .await
            .map_err(|error| format!("login after a rejected token: {error}"))?;
        if login.device_id != self.account.device_id() {
            return Err(format!(
                "login kept device {} but got device {}",
                self.account.device_id(),
                login.device_id
            ));
        }
        self.account.login = login;
        Ok(())
    }

    async fn finish(&mut self, deadline: Instant) -> Result<DeviceReport, String> {
        loop {
            self.online_by(deadline).await?;
            let client = self.client.as_ref().expect("online");
            let result = self.inbox.resync(client).await;
            match result {
                Ok(messages) => {
                    self.delivered.extend(messages);
                    break;
                }
                Err(error) if Instant::now() >= deadline => {
                    return Err(format!("final resync: {error}"))
                }
                Err(error) => self.after_failed_request(&error).await,
            }
        }
        let synced = loop {
            let client = self
                .client
                .as_ref()
                .ok_or("connection lost at the final SYNC")?;
            match sync_from_zero(client).await {
                Ok(messages) => break messages,
                Err(error) if Instant::now() >= deadline => {
                    return Err(format!("SYNC from 0: {error}"))
                }
                Err(_) => tokio::time::sleep(REQUEST_RETRY_DELAY).await,
            }
        };
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
        Ok(DeviceReport {
            user: self.user,
            account: self.account.clone(),
            inbox: std::mem::take(&mut self.delivered),
            synced,
            counters: self.counters.clone(),
        })
    }
}

fn token_rejected(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::DeviceUnknown
            | ErrorCode::TokenInvalid
            | ErrorCode::TokenExpired
            | ErrorCode::TokenRevoked
    )
}

/// Every message of the user from seq 1, paging SYNC until the server has no more. A page
/// rejected by the connection's rate limit is asked for again after the wait the reply names,
/// as a device does when it catches up on a long backlog.
pub async fn sync_from_zero(client: &Client) -> Result<Vec<Message>, ClientError> {
    let mut messages: Vec<Message> = Vec::new();
    loop {
        let after = messages.last().map_or(0, |message| message.seq);
        let page = loop {
            match client.sync(after, CHECK_PAGE).await {
                Err(err) => match err.retry_after() {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(err),
                },
                Ok(page) => break page,
            }
        };
        let more = page.has_more && !page.messages.is_empty();
        messages.extend(page.messages);
        if !more {
            return Ok(messages);
        }
    }
}

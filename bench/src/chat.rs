//! The `chat` scenario: P pairs of friends, where user 2k sends direct messages to user
//! 2k + 1 at an even share of the total rate, and each receiver measures the latency of
//! every message from its intended send time.

use std::process::ExitCode;

use im_client::business::LogicApi;
use im_client::{Client, ConversationType};

use crate::cli::ChatArgs;
use crate::messaging::{self, ScenarioError};
use crate::schedule::Schedule;
use crate::session::Target;
use crate::traffic::{Destination, SenderSpec, TrafficFigures};

/// Runs the scenario and returns the exit code: success only when no error was counted and
/// every message arrived exactly once.
pub(crate) async fn run(args: ChatArgs) -> ExitCode {
    let prefix = messaging::scenario_prefix(&args.messaging, "chat");
    let name_receiver = |pair: usize| format!("{prefix}-{}", 2 * pair + 1);
    messaging::finish(execute(&args).await, &name_receiver)
}

async fn execute(args: &ChatArgs) -> Result<TrafficFigures, ScenarioError> {
    let common = &args.messaging;
    let connections = 2 * args.pairs;
    let schedule = Schedule::new(args.rate, args.pairs, common.duration_secs);
    let sources = messaging::source_count(common, connections);
    let file_limit = messaging::raise_file_limit()?;
    messaging::print_header("chat", common);
    print_parameters(args, &schedule);
    messaging::print_common_parameters(common, &schedule, sources, &file_limit);
    messaging::check_capacity(connections, &file_limit)?;

    let targets = messaging::prepare_users(common, "chat", connections).await?;
    let api = messaging::connect_logic(common).await?;
    let made = messaging::within_setup(common, make_friends(&api, &targets)).await?;
    eprintln!(
        "setup: {} pairs are friends, {made} made by this run",
        args.pairs
    );
    let clients = messaging::sign_in_all(common, &targets, sources).await?;

    let (senders, receivers) = pair_up(clients, &targets);
    let plan = messaging::traffic_plan(common, schedule);
    messaging::run_traffic(common, plan, senders, receivers).await
}

fn print_parameters(args: &ChatArgs, schedule: &Schedule) {
    let prefix = messaging::scenario_prefix(&args.messaging, "chat");
    println!(
        "  pairs                {} ({} connections)",
        args.pairs,
        2 * args.pairs
    );
    println!(
        "  users                {prefix}-0 .. {prefix}-{}; user 2k sends to user 2k + 1",
        2 * args.pairs - 1
    );
    println!(
        "  rate                 {} messages/s in total, {:.3}/s per pair",
        schedule.rate,
        schedule.rate as f64 / schedule.streams as f64
    );
}

/// Makes each pair (2k, 2k + 1) friends unless they are already. Returns how many pairs this
/// run made friends.
async fn make_friends(api: &LogicApi, targets: &[Target]) -> Result<u64, ScenarioError> {
    let pairs = targets.chunks_exact(2).map(|pair| (&pair[0], &pair[1]));
    messaging::befriend_all(api, pairs).await
}

/// Splits the connections, in target order, into senders (even) and receivers (odd). Pair k
/// is stream k and receiver k.
fn pair_up(clients: Vec<Client>, targets: &[Target]) -> (Vec<SenderSpec>, Vec<Client>) {
    let mut senders = Vec::with_capacity(clients.len() / 2);
    let mut receivers = Vec::with_capacity(clients.len() / 2);
    let mut clients = clients.into_iter();
    for (pair, users) in targets.chunks_exact(2).enumerate() {
        let (Some(sender), Some(receiver)) = (clients.next(), clients.next()) else {
            break;
        };
        senders.push(SenderSpec {
            client: sender,
            destination: Destination {
                stream: u32::try_from(pair).unwrap_or(u32::MAX),
                conversation_type: ConversationType::User,
                receiver_id: users[1].user_id,
            },
            recipients: vec![pair],
        });
        receivers.push(receiver);
    }
    (senders, receivers)
}

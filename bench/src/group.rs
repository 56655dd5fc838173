//! The `group` scenario: member 0 of a group of G members sends to the group at a fixed rate,
//! and each of the other G - 1 members measures the latency of every copy it receives. The
//! group is created once and found again by name through the group cache. With
//! `--slow-readers K` the last K members read nothing until the drain ends, and the run
//! reports what they cost in engine and kernel memory.

use std::process::ExitCode;

use im_client::business::LogicApi;
use im_client::{Client, ConversationType, ErrorCode};
use im_proto::v1::GroupInfo;

use crate::cli::{GroupArgs, MessagingArgs};
use crate::group_cache::{group_cache_path, GroupCache};
use crate::messaging::{self, ScenarioError};
use crate::schedule::Schedule;
use crate::session::Target;
use crate::signin::EngineWatch;
use crate::slow_readers::{self, MemorySampler, MetricsEndpoint, SlowReaderFigures};
use crate::traffic::{Destination, SenderSpec, TrafficFigures};

/// Members added by one AddGroupMembers call.
const ADD_CHUNK: usize = 100;

/// Everything a group run measured.
struct GroupFigures {
    traffic: TrafficFigures,
    /// `None` without slow readers.
    slow: Option<SlowReaderFigures>,
}

/// Runs the scenario and returns the exit code: success only when no error was counted and
/// every member that reads received every message exactly once. The slow readers' figures do
/// not count toward it.
pub(crate) async fn run(args: GroupArgs) -> ExitCode {
    let prefix = messaging::scenario_prefix(&args.messaging, "group");
    // Receiver i is member i + 1, because member 0 sends.
    let name_receiver = |index: usize| format!("{prefix}-{}", index + 1);
    let (traffic, slow) = match execute(&args).await {
        Ok(figures) => (Ok(figures.traffic), figures.slow),
        Err(error) => (Err(error), None),
    };
    let code = messaging::finish(traffic, &name_receiver);
    if let Some(slow) = &slow {
        slow_readers::report::print(slow);
    }
    code
}

async fn execute(args: &GroupArgs) -> Result<GroupFigures, ScenarioError> {
    let online = online_members(args)?;
    check_slow_readers(online, args.slow_readers)?;
    if args.slow_readers == 0 && !(args.engine_metrics_url.is_empty() && args.engine_pid.is_empty())
    {
        return Err(ScenarioError::NeedsSlowReaders);
    }
    let endpoints = metrics_endpoints(&args.engine_metrics_url)?;
    let common = &args.messaging;
    let schedule = Schedule::new(args.rate, 1, common.duration_secs);
    let sources = messaging::source_count(common, args.members);
    let file_limit = messaging::raise_file_limit()?;
    messaging::print_header("group", common);
    print_parameters(args, &schedule);
    messaging::print_common_parameters(common, &schedule, sources, &file_limit);
    let engine =
        (args.slow_readers > 0).then(|| EngineWatch::find(&args.engine_pid, &common.conn.url));
    messaging::check_capacity(online, &file_limit)?;

    let targets = messaging::prepare_users(common, "group", args.members).await?;
    let api = messaging::connect_logic(common).await?;
    let name = group_name(common, args.members);
    let group_id =
        messaging::within_setup(common, ensure_group(common, &api, &targets, &name)).await?;
    eprintln!("setup: group {name} has id {group_id}");
    let online_count = usize::try_from(online).unwrap_or(usize::MAX);
    let clients = messaging::sign_in_all(common, &targets[..online_count], sources).await?;

    let slow_count = usize::try_from(args.slow_readers).unwrap_or(usize::MAX);
    let roles = split_roles(clients, group_id, slow_count);
    slow_readers::pause(&roles.slow);
    let plan = messaging::traffic_plan(common, schedule);
    let run_id = plan.run_id;
    let Some(engine) = engine else {
        let traffic = messaging::run_traffic(common, plan, roles.sender, roles.receivers).await?;
        return Ok(GroupFigures {
            traffic,
            slow: None,
        });
    };

    let sampler = MemorySampler::start(engine, endpoints).await;
    let traffic = messaging::run_traffic(common, plan, roles.sender, roles.receivers).await;
    let readings = sampler.finish().await;
    let traffic = traffic?;
    eprintln!(
        "slow readers: reading what is buffered for {} connections, for at most {} s",
        roles.slow.len(),
        slow_readers::READ_LIMIT.as_secs()
    );
    let tallies = slow_readers::read_remaining(roles.slow, run_id).await;
    let slow = SlowReaderFigures {
        names: slow_reader_names(args),
        stored: traffic.replies,
        tallies,
        readings,
    };
    Ok(GroupFigures {
        traffic,
        slow: Some(slow),
    })
}

/// Returns the members that sign in: `--online`, at most `--members`, else every member.
fn online_members(args: &GroupArgs) -> Result<u64, ScenarioError> {
    match args.online {
        None => Ok(args.members),
        Some(online) if online <= args.members => Ok(online),
        Some(online) => Err(ScenarioError::TooManyOnline {
            online,
            members: args.members,
        }),
    }
}

/// Checks that the slow readers leave at least one online recipient that reads.
fn check_slow_readers(online: u64, slow_readers: u64) -> Result<(), ScenarioError> {
    let recipients = online.saturating_sub(1);
    if slow_readers < recipients {
        return Ok(());
    }
    Err(ScenarioError::TooManySlowReaders {
        slow_readers,
        online,
        max: recipients.saturating_sub(1),
    })
}

/// Parses the `--engine-metrics-url` flags.
fn metrics_endpoints(urls: &[String]) -> Result<Vec<MetricsEndpoint>, ScenarioError> {
    urls.iter()
        .map(|url| {
            MetricsEndpoint::parse(url).ok_or_else(|| ScenarioError::MetricsUrl(url.clone()))
        })
        .collect()
}

/// Names the slow readers, the last `--slow-readers` online members, as `first .. last`.
fn slow_reader_names(args: &GroupArgs) -> String {
    let prefix = messaging::scenario_prefix(&args.messaging, "group");
    let online = args.online.unwrap_or(args.members);
    let first = online - args.slow_readers;
    let last = online - 1;
    if first == last {
        format!("{prefix}-{last}")
    } else {
        format!("{prefix}-{first} .. {prefix}-{last}")
    }
}

fn print_parameters(args: &GroupArgs, schedule: &Schedule) {
    let prefix = messaging::scenario_prefix(&args.messaging, "group");
    println!(
        "  members              {} ({} recipients per message)",
        args.members,
        args.members - 1
    );
    println!(
        "  users                {prefix}-0 (sender, owner) .. {prefix}-{}",
        args.members - 1
    );
    println!(
        "  group                {}",
        group_name(&args.messaging, args.members)
    );
    let online = args.online.unwrap_or(args.members);
    if online < args.members {
        println!(
            "  online               {online} ({prefix}-0 .. {prefix}-{}; the other {} stay offline)",
            online - 1,
            args.members - online
        );
    }
    println!(
        "  rate                 {} messages/s, {} deliveries/s",
        schedule.rate,
        schedule.rate * (online - 1)
    );
    if args.slow_readers > 0 {
        println!(
            "  slow readers         {} ({} read nothing until the drain ends)",
            args.slow_readers,
            slow_reader_names(args)
        );
    }
}

/// Names the group of a run with `members` members, so runs of other sizes use other groups.
fn group_name(args: &MessagingArgs, members: u64) -> String {
    format!("{}-{members}", messaging::scenario_prefix(args, "group"))
}

/// Returns the id of the group `name` owned by the first target with every target as member:
/// the cached group, else the owner's group of that name, else a new one. Adds members that
/// are missing and saves the id in the group cache. The owner may add only friends, so it
/// first befriends every member that is not in the group yet.
async fn ensure_group(
    args: &MessagingArgs,
    api: &LogicApi,
    targets: &[Target],
    name: &str,
) -> Result<u64, ScenarioError> {
    let (owner, members) = targets
        .split_first()
        .expect("the command line requires 2 or more members");
    let owner_api = messaging::api_as(api, owner)?;
    let member_ids: Vec<u64> = members.iter().map(|member| member.user_id).collect();
    let path = group_cache_path(&args.conn.cache_dir, &args.conn.user_prefix);
    let cache_error = |source| ScenarioError::GroupCache {
        path: path.clone(),
        source,
    };
    let mut cache = GroupCache::load(&path).map_err(cache_error)?;

    let cached = match cache.groups.get(name) {
        Some(id) => cached_group(&owner_api, *id, name, owner.user_id).await?,
        None => None,
    };
    let found = match cached {
        Some(group) => Some(group),
        None => group_named(&owner_api, name, owner.user_id).await?,
    };
    let joining = members.iter().filter(|member| {
        found
            .as_ref()
            .is_none_or(|group| !group.member_ids.contains(&member.user_id))
    });
    let befriended = messaging::befriend_all(api, joining.map(|member| (owner, member))).await?;
    if befriended > 0 {
        eprintln!("setup: {befriended} members made friends of the group's owner");
    }
    let group = match found {
        Some(group) => group,
        None => owner_api
            .create_group(name, &member_ids)
            .await
            .map_err(messaging::setup_error("CreateGroup", owner.user_id))?,
    };
    add_missing_members(&owner_api, &group, &member_ids, owner.user_id).await?;

    cache.groups.insert(name.to_owned(), group.group_id);
    cache.save(&path).map_err(cache_error)?;
    Ok(group.group_id)
}

/// Returns the cached group when it still exists as the owner's group of that name. A
/// database reset can drop it or give its id to another group.
async fn cached_group(
    owner_api: &LogicApi,
    group_id: u64,
    name: &str,
    owner_id: u64,
) -> Result<Option<GroupInfo>, ScenarioError> {
    match owner_api.get_group(group_id).await {
        Ok(group) if group.name == name && group.owner_id == owner_id => Ok(Some(group)),
        Ok(_) => Ok(None),
        Err(error)
            if matches!(
                error.code(),
                Some(ErrorCode::NotFound | ErrorCode::NotGroupMember | ErrorCode::PermissionDenied)
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(messaging::setup_error("GetGroup", owner_id)(source)),
    }
}

/// Returns the owner's group called `name`, if there is one.
async fn group_named(
    owner_api: &LogicApi,
    name: &str,
    owner_id: u64,
) -> Result<Option<GroupInfo>, ScenarioError> {
    let groups = owner_api
        .list_groups()
        .await
        .map_err(messaging::setup_error("ListGroups", owner_id))?;
    Ok(groups
        .into_iter()
        .find(|group| group.name == name && group.owner_id == owner_id))
}

/// Adds the members the group lacks, then checks that it has them all.
async fn add_missing_members(
    owner_api: &LogicApi,
    group: &GroupInfo,
    member_ids: &[u64],
    owner_id: u64,
) -> Result<(), ScenarioError> {
    let missing: Vec<u64> = member_ids
        .iter()
        .copied()
        .filter(|id| !group.member_ids.contains(id))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "setup: adding {} members to group {}",
        missing.len(),
        group.group_id
    );
    for chunk in missing.chunks(ADD_CHUNK) {
        let added = owner_api.add_group_members(group.group_id, chunk).await;
        messaging::made_unless_exists(added, "AddGroupMembers", owner_id)?;
    }
    let updated = owner_api
        .get_group(group.group_id)
        .await
        .map_err(messaging::setup_error("GetGroup", owner_id))?;
    let still_missing = missing
        .iter()
        .filter(|id| !updated.member_ids.contains(id))
        .count();
    if still_missing > 0 {
        return Err(ScenarioError::GroupIncomplete {
            group_id: group.group_id,
            missing: still_missing,
        });
    }
    Ok(())
}

/// The connections of a run by role.
struct Roles {
    sender: Vec<SenderSpec>,
    /// Recipients that read, and count toward received and lost messages.
    receivers: Vec<Client>,
    slow: Vec<Client>,
}

/// Makes the first connection the sender to the group, the last `slow_readers` its slow
/// readers and the rest its receivers.
fn split_roles(clients: Vec<Client>, group_id: u64, slow_readers: usize) -> Roles {
    let mut clients = clients.into_iter();
    let Some(sender) = clients.next() else {
        return Roles {
            sender: Vec::new(),
            receivers: Vec::new(),
            slow: Vec::new(),
        };
    };
    let mut receivers: Vec<Client> = clients.collect();
    let slow = receivers.split_off(receivers.len().saturating_sub(slow_readers));
    let spec = SenderSpec {
        client: sender,
        destination: Destination {
            stream: 0,
            conversation_type: ConversationType::Group,
            receiver_id: group_id,
        },
        recipients: (0..receivers.len()).collect(),
    };
    Roles {
        sender: vec![spec],
        receivers,
        slow,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn slow_readers_below_recipients_accepted() {
        assert!(check_slow_readers(500, 0).is_ok());
        assert!(check_slow_readers(500, 498).is_ok());
        assert!(check_slow_readers(3, 1).is_ok());
        assert!(check_slow_readers(2, 0).is_ok());
    }

    #[test]
    fn slow_readers_without_a_reading_recipient_rejected() {
        let error = check_slow_readers(500, 499).unwrap_err();

        assert_eq!(
            error.to_string(),
            "invalid --slow-readers 499: it must be less than the 500 online members minus 1 (the \
             sender), so that at least one recipient reads; pass at most 498"
        );
        assert!(check_slow_readers(500, 1000).is_err());
        assert!(check_slow_readers(2, 1).is_err());
    }

    fn group_args(flags: &[&str]) -> GroupArgs {
        let argv = ["im-bench", "group"].iter().chain(flags);
        let cli = Cli::try_parse_from(argv).expect("parse");
        let Some(Command::Group(args)) = cli.command else {
            panic!("group expected");
        };
        args
    }

    #[test]
    fn online_defaults_to_every_member() {
        let args = group_args(&["--members", "2000"]);

        assert_eq!(online_members(&args).unwrap(), 2000);
    }

    #[test]
    fn online_members_are_the_first_ones() {
        let args = group_args(&[
            "--members",
            "2000",
            "--online",
            "400",
            "--slow-readers",
            "3",
        ]);

        assert_eq!(online_members(&args).unwrap(), 400);
        assert_eq!(
            slow_reader_names(&args),
            "bench-group-397 .. bench-group-399"
        );
    }

    #[test]
    fn online_above_members_rejected() {
        let args = group_args(&["--members", "20", "--online", "21"]);

        assert_eq!(
            online_members(&args).unwrap_err().to_string(),
            "invalid --online 21: the group has only --members 20; pass at most 20, or leave \
             --online out to sign in every member"
        );
        assert!(Cli::try_parse_from(["im-bench", "group", "--online", "1"]).is_err());
    }

    #[test]
    fn metrics_url_without_http_rejected() {
        let urls = [
            "http://127.0.0.1:9101/metrics".to_owned(),
            "127.0.0.1:9101".to_owned(),
        ];

        let error = metrics_endpoints(&urls).unwrap_err();

        assert_eq!(
            error.to_string(),
            "invalid --engine-metrics-url \"127.0.0.1:9101\": expected http://HOST:PORT/PATH, \
             such as http://127.0.0.1:9101/metrics"
        );
        assert_eq!(
            metrics_endpoints(&urls[..1]).map(|found| found.len()).ok(),
            Some(1)
        );
    }
}

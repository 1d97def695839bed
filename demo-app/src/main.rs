//! `hyphae`: the app people run. `hyphae up` starts a node in this process, serves the
//! Client-Server API and, beside it, the owner's web UI (`ui/`); `hyphae backup-server` runs a
//! node with no owner that keeps replicas for the devices its operator invites; `hyphae policy`
//! edits and subscribes to policy lists on a running `hyphae up` (`policy_cli.rs`), and
//! `hyphae password` sets the owner's password there (`password_cli.rs`).

mod backup_target;
mod password_cli;
mod policy_cli;
mod secret;
mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use backup_target::BackupTarget;
use clap::{Parser, Subcommand};
use hyphae_node::{Config, Multiaddr, Node, Registration, TransportConfig};
use ruma::{OwnedRoomId, OwnedServerName};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "hyphae",
    version,
    about = "Serverless Matrix: a homeserver that runs inside this app, on this device.",
    long_about = "Hyphae runs a Matrix homeserver inside this app, on this device. Its server name \
                  is its own public key; devices find each other on the local network and beyond, \
                  with no server anywhere. Standard Matrix clients can log in to it.\n\n\
                  Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to see more."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start and matched once: how big its largest variant is costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start this device's node and keep it running until Ctrl-C.
    Up {
        /// Data folder (database, identity key). Default: the platform's data folder.
        #[arg(long, value_name = "DIR", env = "HYPHAE_DATA")]
        data: Option<PathBuf>,
        /// Address for the Client-Server API (Matrix clients connect here).
        #[arg(long, value_name = "ADDR", default_value_t = Config::DEFAULT_CLIENT_LISTEN)]
        listen: SocketAddr,
        /// Let anyone who can reach the API register, even beyond loopback.
        #[arg(long)]
        open_registration: bool,
        /// A token that allows registering (repeat for several). With tokens set, registering
        /// needs one unless --open-registration is given.
        #[arg(long = "registration-token", value_name = "TOKEN")]
        registration_tokens: Vec<String>,
        /// The owner's user name on this device (the local part of @NAME:<server name>).
        /// Default: your login name, else "me".
        #[arg(long, value_name = "NAME", value_parser = parse_localpart, conflicts_with = "no_app")]
        name: Option<String>,
        /// Run the node without an owner and without the web UI (Matrix clients still work).
        #[arg(long)]
        no_app: bool,
        /// Subscribe to this backup server at start (unless subscribed already): its multiaddr
        /// ending in /p2p/<peer id>, as `hyphae backup-server` prints it; or just its peer id
        /// or server name, if this device can find it (on the local network, or in the DHT).
        /// The token from `hyphae backup-server invite` is read from --backup-token-file, else
        /// HYPHAE_BACKUP_TOKEN, else asked (not shown; one line of stdin when it is no terminal).
        #[arg(long, value_name = "ADDRESS", value_parser = str::parse::<BackupTarget>)]
        backup: Option<BackupTarget>,
        /// A file holding the token, for --backup.
        #[arg(long, value_name = "FILE", requires = "backup")]
        backup_token_file: Option<PathBuf>,
        /// The token itself, for --backup: other users of this machine can read it while
        /// hyphae runs, and your shell keeps it; prefer --backup-token-file or the prompt.
        #[arg(
            long,
            value_name = "TOKEN",
            requires = "backup",
            conflicts_with = "backup_token_file"
        )]
        backup_token: Option<String>,
        /// Unsubscribe from the backup server at start: it deletes everything it kept for this
        /// device (the web UI's settings do the same while running).
        #[arg(long, conflicts_with_all = ["backup", "restore_from"])]
        unsubscribe_backup: bool,
        /// Stop using a backup server that is gone for good, without its answer (it keeps its
        /// copy): for when --unsubscribe-backup cannot reach it.
        #[arg(long, conflicts_with_all = ["backup", "restore_from", "unsubscribe_backup"])]
        forget_backup: bool,
        /// Restore this device from its backup server first (its multiaddr ending in
        /// /p2p/<peer id>): only into a new, empty --data folder. The node becomes the backed-up
        /// server again, with its owner, rooms, history and room keys, still subscribed. The
        /// recovery key shown when key backup was turned on is read from --recovery-key-file,
        /// else HYPHAE_RECOVERY_KEY, else asked (not shown; one line of stdin when it is no
        /// terminal).
        #[arg(long, value_name = "MULTIADDR", conflicts_with = "backup")]
        restore_from: Option<Multiaddr>,
        /// A file holding the recovery key, for --restore-from.
        #[arg(long, value_name = "FILE", requires = "restore_from")]
        recovery_key_file: Option<PathBuf>,
        /// The recovery key itself, for --restore-from: other users of this machine can read
        /// it while hyphae runs, and your shell keeps it; prefer --recovery-key-file or the
        /// prompt.
        #[arg(
            long,
            value_name = "KEY",
            requires = "restore_from",
            conflicts_with = "recovery_key_file"
        )]
        recovery_key: Option<String>,
        #[command(flatten)]
        node_policy: NodePolicyArgs,
        #[command(flatten)]
        p2p: P2pArgs,
    },
    /// Run a backup server: a node with no owner that keeps a replica of the rooms of the
    /// devices subscribed to it (each with a token from `hyphae backup-server invite`).
    BackupServer {
        #[command(subcommand)]
        action: Option<BackupAction>,
        /// Data folder. Default: the platform's data folder, "backup-server" inside it.
        #[arg(long, value_name = "DIR", env = "HYPHAE_BACKUP_DATA", global = true)]
        data: Option<PathBuf>,
        /// Where to listen for peers (libp2p multiaddr, repeat for several).
        /// Default: QUIC and TCP on every interface, on ports the system picks.
        #[arg(long = "listen", value_name = "MULTIADDR")]
        listen: Vec<Multiaddr>,
        /// Do not look for peers on the local network (mDNS).
        #[arg(long)]
        no_mdns: bool,
        /// A DHT bootstrap peer, as a multiaddr ending in /p2p/<peer id> (repeat for several).
        #[arg(long = "bootstrap", value_name = "MULTIADDR")]
        bootstrap: Vec<Multiaddr>,
        /// Subscribe the server to this policy list at start, by alias or room id (repeat for
        /// several): PDUs from the users and servers it bans are refused, never kept or passed
        /// on. Subscriptions are kept; --drop-policy-list ends one.
        #[arg(long = "policy-list", value_name = "LIST")]
        policy_lists: Vec<String>,
        /// A server in the lists' rooms to join them through (for a room id; repeat for several).
        #[arg(long = "policy-via", value_name = "SERVER", value_parser = parse_server_name)]
        policy_via: Vec<OwnedServerName>,
        /// End the server's subscription to this list (its room id), at start.
        #[arg(long = "drop-policy-list", value_name = "ROOM_ID", value_parser = parse_room_id)]
        drop_policy_lists: Vec<OwnedRoomId>,
    },
    /// Your policy lists and subscriptions, on the `hyphae up` running here: make a list, ban
    /// users, rooms or servers in it, share it, subscribe to others' (hide, blur or warn).
    Policy(policy_cli::PolicyArgs),
    /// Set the password you log in with from Element or another Matrix client on this device,
    /// on the `hyphae up` running here. Asked at a prompt (not shown), or read from stdin.
    Password(password_cli::PasswordArgs),
}

/// Policy lists the node itself subscribes to (its operator's choice), for every user on it.
#[derive(clap::Args)]
struct NodePolicyArgs {
    /// Subscribe the node itself to this policy list at start, by alias or room id (repeat for
    /// several): PDUs from the users and servers it bans are refused at this node's edge, for
    /// everyone on it. Subscriptions are kept; --drop-node-policy-list ends one.
    #[arg(long = "node-policy-list", value_name = "LIST")]
    lists: Vec<String>,
    /// A server in the lists' rooms to join them through (for a room id; repeat for several).
    #[arg(long = "node-policy-via", value_name = "SERVER", value_parser = parse_server_name)]
    via: Vec<OwnedServerName>,
    /// End the node's subscription to this list (its room id), at start.
    #[arg(long = "drop-node-policy-list", value_name = "ROOM_ID", value_parser = parse_room_id)]
    drop: Vec<OwnedRoomId>,
}

#[derive(Subcommand)]
enum BackupAction {
    /// Print a one-time token a device subscribes with (works while the server runs).
    Invite {
        /// Storage the device may use: 500M, 2G, ... (powers of 1024).
        #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = hyphae_node::parse_size)]
        quota: u64,
    },
}

/// How the node meets other devices.
#[derive(clap::Args)]
struct P2pArgs {
    /// Where to listen for peers (libp2p multiaddr, repeat for several).
    /// Default: QUIC and TCP on every interface, on ports the system picks.
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    p2p_listen: Vec<Multiaddr>,
    /// Do not look for peers on the local network (mDNS).
    #[arg(long)]
    no_mdns: bool,
    /// A DHT bootstrap peer, as a multiaddr ending in /p2p/<peer id> (repeat for several).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Do not relay for peers that cannot reach each other directly. By default every device
    /// relays (circuit relay v2, bounded), so at an event phones in range of two groups carry
    /// the traffic between them; each device also reserves a slot on up to two relays it meets.
    #[arg(long)]
    no_relay_server: bool,
    /// Run without the peer-to-peer overlay: a homeserver for this device's clients only.
    #[arg(long, conflicts_with_all = ["p2p_listen", "no_mdns", "bootstrap", "no_relay_server"])]
    no_p2p: bool,
}

impl P2pArgs {
    fn into_config(self) -> Result<Option<TransportConfig>, String> {
        if self.no_p2p {
            return Ok(None);
        }
        let mut config = TransportConfig::default();
        if !self.p2p_listen.is_empty() {
            config.listen = self.p2p_listen;
        }
        config.mdns.enabled = !self.no_mdns;
        config.relay_server = !self.no_relay_server;
        for addr in self.bootstrap {
            let peer = addr
                .iter()
                .find_map(|part| match part {
                    hyphae_node::multiaddr::Protocol::P2p(peer) => Some(peer),
                    _ => None,
                })
                .ok_or_else(|| {
                    format!("bootstrap address {addr} does not end in /p2p/<peer id>")
                })?;
            config.bootstrap.push((peer, addr));
        }
        Ok(Some(config))
    }
}

/// The backup token (for --backup) and the recovery key (for --restore-from), each from the
/// command line, its file, the environment or the prompt (`secret.rs`).
type SecretSources = Option<(Option<String>, Option<PathBuf>)>;

fn read_secrets(
    token: SecretSources,
    recovery_key: SecretSources,
) -> Result<(Option<String>, Option<String>), String> {
    let token = token
        .map(|(given, file)| {
            secret::Secret {
                what: "the backup token",
                flag: "--backup-token",
                given,
                file,
                env: "HYPHAE_BACKUP_TOKEN",
            }
            .read()
        })
        .transpose()?;
    let recovery_key = recovery_key
        .map(|(given, file)| {
            secret::Secret {
                what: "the recovery key",
                flag: "--recovery-key",
                given,
                file,
                env: "HYPHAE_RECOVERY_KEY",
            }
            .read()
        })
        .transpose()?;
    Ok((token, recovery_key))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hyphae: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Up {
            data,
            listen,
            open_registration,
            registration_tokens,
            name,
            no_app,
            backup,
            backup_token,
            backup_token_file,
            unsubscribe_backup,
            forget_backup,
            restore_from,
            recovery_key,
            recovery_key_file,
            node_policy,
            p2p,
        } => {
            let Some(data_dir) = data.or_else(default_data_dir) else {
                eprintln!("hyphae: no platform data folder is known here; pass --data DIR");
                return ExitCode::FAILURE;
            };
            let p2p = match p2p.into_config() {
                Ok(p2p) => p2p,
                Err(e) => {
                    eprintln!("hyphae: {e}");
                    return ExitCode::from(2);
                }
            };
            let secrets = read_secrets(
                backup
                    .is_some()
                    .then_some((backup_token, backup_token_file)),
                restore_from
                    .is_some()
                    .then_some((recovery_key, recovery_key_file)),
            );
            let (backup_token, recovery_key) = match secrets {
                Ok(secrets) => secrets,
                Err(e) => {
                    eprintln!("hyphae: {e}");
                    return ExitCode::from(2);
                }
            };
            let ui = (!no_app).then(ui::Ui::new);
            runtime.block_on(up(
                Config {
                    client_listen: listen,
                    open_registration,
                    registration_tokens,
                    p2p,
                    owner: (!no_app).then(|| name.unwrap_or_else(default_name)),
                    extra_routes: ui.as_ref().map(ui::Ui::router),
                    ..Config::new(data_dir)
                },
                ui,
                match (backup.zip(backup_token), unsubscribe_backup, forget_backup) {
                    (Some((target, token)), _, _) => BackupChange::Subscribe(target, token),
                    (None, true, _) => BackupChange::Unsubscribe,
                    (None, false, true) => BackupChange::Forget,
                    (None, false, false) => BackupChange::None,
                },
                restore_from.zip(recovery_key),
                node_policy,
            ))
        }
        Command::BackupServer {
            action,
            data,
            listen,
            no_mdns,
            bootstrap,
            policy_lists,
            policy_via,
            drop_policy_lists,
        } => {
            let Some(data_dir) =
                data.or_else(|| default_data_dir().map(|d| d.join("backup-server")))
            else {
                eprintln!("hyphae: no platform data folder is known here; pass --data DIR");
                return ExitCode::FAILURE;
            };
            if let Some(BackupAction::Invite { quota }) = action {
                return match hyphae_node::create_invite(&data_dir, quota) {
                    Ok(token) => {
                        println!("{token}");
                        eprintln!(
                            "hyphae: a one-time token for {quota} bytes; the device subscribes with \
                             hyphae up --backup <server address>, which asks for it (or \
                             --backup-token-file <file>)"
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("hyphae: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            let p2p = P2pArgs {
                p2p_listen: listen,
                no_mdns,
                bootstrap,
                no_relay_server: false,
                no_p2p: false,
            };
            let p2p = match p2p.into_config() {
                Ok(p2p) => p2p,
                Err(e) => {
                    eprintln!("hyphae: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime.block_on(backup_server(
                Config {
                    // Nobody but this machine needs its Client-Server API; any free port.
                    client_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                    p2p,
                    owner: None,
                    backup_server: true,
                    ..Config::new(data_dir)
                },
                NodePolicyArgs {
                    lists: policy_lists,
                    via: policy_via,
                    drop: drop_policy_lists,
                },
            ))
        }
        Command::Policy(args) => policy_cli::run(args, &runtime),
        Command::Password(args) => password_cli::run(args, &runtime),
    }
}

async fn backup_server(config: Config, policy: NodePolicyArgs) -> ExitCode {
    let data_dir = config.data_dir.clone();
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("hyphae: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = match stop_signal() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("hyphae: cannot listen for Ctrl-C: {e}");
            node.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    println!("Hyphae backup server is up.");
    println!("  server name  {}", node.server_name());
    println!("  data folder  {}", data_dir.display());
    if let Some(transport) = node.transport() {
        let peer = transport.local_peer_id();
        println!("  peer id      {peer}");
        for addr in transport.listen_addrs().await.unwrap_or_default() {
            println!("  p2p listen   {addr}/p2p/{peer}");
        }
    }
    node_policy_lists(&node, policy).await;
    println!(
        "Invite a device with: hyphae backup-server invite --data {}",
        data_dir.display()
    );
    println!("Press Ctrl-C to stop.");
    stop.await;
    node.shutdown().await;
    println!("Hyphae backup server stopped.");
    ExitCode::SUCCESS
}

/// Restores this device from the backup server at `addr` into the (empty) data folder and
/// starts it; says what came back.
async fn restore_device(
    config: Config,
    addr: Multiaddr,
    recovery_key: &str,
) -> Result<Node, String> {
    let server = backup_target::server_name_of_addr(&addr)?;
    println!("Restoring from backup server {server} ...");
    let started = std::time::Instant::now();
    let restored = hyphae_node::restore_from_backup(config, &server, vec![addr], recovery_key)
        .await
        .map_err(|e| format!("restore failed: {e}"))?;
    println!(
        "Restored {}: {} rooms, {} events, {} room keys in {:.1} s.",
        restored.node.server_name(),
        restored.rooms,
        restored.pdus,
        restored.room_keys,
        started.elapsed().as_secs_f64()
    );
    if restored.refused + restored.rejected > 0 {
        println!(
            "  {} entries the backup server had were not this device's, and {} events failed \
             the room rules again: left out",
            restored.refused, restored.rejected
        );
    }
    println!(
        "  identity sealed {} (sealing number {}); if you know of a later one, the backup \
         server served an older copy",
        sealed_at(restored.identity_sealed_ms),
        restored.identity_version
    );
    if let Some(e) = &restored.key_backup_error {
        println!("  the room keys could not be restored ({e}); old messages stay unreadable");
    }
    Ok(restored.node)
}

/// How long ago a sealed identity was sealed, for a person to compare with what they remember.
fn sealed_at(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if ms == 0 || ms > now {
        return "at an unknown time".to_owned();
    }
    let minutes = (now - ms) / 60_000;
    match minutes {
        0..60 => format!("{minutes} minutes ago"),
        60..2880 => format!("{} hours ago", minutes / 60),
        _ => format!("{} days ago", minutes / 1440),
    }
}

/// What `hyphae up` is asked to change about the backup at start.
enum BackupChange {
    None,
    Subscribe(BackupTarget, String),
    Unsubscribe,
    /// Stop using a server that is gone for good, without its answer.
    Forget,
}

/// Subscribes to the backup server `target` unless this device is subscribed already; says
/// how the backup stands.
async fn subscribe_backup(
    node: &Node,
    target: BackupTarget,
    token: &str,
) -> Result<String, String> {
    if let Some(status) = node.backup_status().await.map_err(|e| e.to_string())? {
        return Ok(format!(
            "{} ({} bytes kept, {} to send)",
            status.server, status.bytes_acknowledged, status.pending
        ));
    }
    node.subscribe_backup(&target.server, target.addrs, token)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("{} (subscribed now)", target.server))
}

/// Ends the subscription (the server deletes its copy); says which server it was.
async fn unsubscribe_backup(node: &Node) -> Result<String, String> {
    let Some(status) = node.backup_status().await.map_err(|e| e.to_string())? else {
        return Ok("none (this device was not subscribed)".to_owned());
    };
    node.unsubscribe_backup().await.map_err(|e| e.to_string())?;
    Ok(format!(
        "none (unsubscribed from {}; it deletes its copy)",
        status.server
    ))
}

async fn up(
    config: Config,
    ui: Option<ui::Ui>,
    backup: BackupChange,
    restore: Option<(Multiaddr, String)>,
    policy: NodePolicyArgs,
) -> ExitCode {
    let data_dir = config.data_dir.clone();
    let registration = match config.registration() {
        Registration::Open => "open to anyone who can reach the client API".to_owned(),
        Registration::Loopback => {
            "open to apps on this device (pass --open-registration to allow web pages)".to_owned()
        }
        Registration::Token(tokens) => {
            format!("needs one of {} registration token(s)", tokens.len())
        }
        Registration::Closed => {
            "closed (the API is reachable beyond this device; pass --registration-token or \
             --open-registration)"
                .to_owned()
        }
    };
    let started = match restore {
        Some((addr, key)) => restore_device(config, addr, &key).await,
        None => Node::start(config).await.map_err(|e| e.to_string()),
    };
    let node = match started {
        Ok(node) => node,
        Err(e) => {
            eprintln!("hyphae: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Listen for Ctrl-C before saying we are up, so a quick Ctrl-C still stops cleanly.
    let stop = match stop_signal() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("hyphae: cannot listen for Ctrl-C: {e}");
            node.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    let ui_url = match &ui {
        Some(ui) => match ui.attach(&node, &data_dir) {
            Ok(url) => Some(url),
            Err(e) => {
                eprintln!("hyphae: {e}");
                node.shutdown().await;
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    println!("Hyphae is up.");
    if let Some(url) = &ui_url {
        // The link holds the key to the UI: anyone with it can chat as the owner.
        println!("  web UI       {url}");
        if !node.client_addr().ip().is_loopback() {
            eprintln!(
                "hyphae: the web UI is reachable beyond this device, over plain HTTP; only the \
                 key in its link protects it"
            );
        }
    }
    if let Some(app) = node.app() {
        println!("  user         {}", app.user_id());
    }
    println!("  server name  {}", node.server_name());
    println!("  client API   http://{}", node.client_addr());
    println!("  data folder  {}", data_dir.display());
    match node.transport() {
        Some(transport) => {
            println!("  peer id      {}", transport.local_peer_id());
            for addr in transport.listen_addrs().await.unwrap_or_default() {
                println!("  p2p listen   {addr}");
            }
        }
        None => println!("  p2p          off"),
    }
    println!("  registration {registration}");
    match backup {
        BackupChange::None => {}
        BackupChange::Subscribe(target, token) => {
            match subscribe_backup(&node, target, &token).await {
                Ok(status) => println!("  backup       {status}"),
                // The device works without its backup; the person sees why there is none.
                Err(e) => eprintln!("hyphae: no backup: {e}"),
            }
        }
        BackupChange::Unsubscribe => match unsubscribe_backup(&node).await {
            Ok(status) => println!("  backup       {status}"),
            // Still subscribed: the server keeps its copy until it hears of it.
            Err(e) => eprintln!(
                "hyphae: still backed up, could not unsubscribe: {e} (--forget-backup stops \
                 using a server that is gone for good)"
            ),
        },
        BackupChange::Forget => match node.forget_backup().await {
            Ok(()) => println!("  backup       none (forgotten; the server keeps its copy)"),
            Err(e) => eprintln!("hyphae: {e}"),
        },
    }
    node_policy_lists(&node, policy).await;
    println!("Press Ctrl-C to stop.");

    stop.await;
    if let Some(ui) = &ui {
        ui.stop();
    }
    node.shutdown().await;
    println!("Hyphae stopped.");
    ExitCode::SUCCESS
}

/// Applies the operator's changes to the node's own policy lists, then prints them all. A list
/// that cannot be joined is said and skipped: the node runs without it.
async fn node_policy_lists(node: &Node, policy: NodePolicyArgs) {
    for list in &policy.drop {
        match node.unsubscribe_policy_list_node(list).await {
            Ok(true) => {}
            Ok(false) => eprintln!("hyphae: the node did not subscribe to the policy list {list}"),
            Err(e) => eprintln!("hyphae: could not end the policy list {list}: {e}"),
        }
    }
    for list in &policy.lists {
        if let Err(e) = node.subscribe_policy_list_node(list, &policy.via).await {
            eprintln!("hyphae: no policy list {list}: {e}");
        }
    }
    for list in node.node_policy_subscriptions() {
        let rules = node.node_policy_rules(&list).await.map_or(0, |r| r.len());
        println!("  policy list  {list} ({})", policy_cli::rules(rules));
    }
}

fn parse_server_name(name: &str) -> Result<OwnedServerName, String> {
    ruma::ServerName::parse(name).map_err(|e| format!("not a server name: {e}"))
}

fn parse_room_id(id: &str) -> Result<OwnedRoomId, String> {
    ruma::RoomId::parse(id).map_err(|e| format!("not a room id (!…): {e}"))
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM; the handlers are in place when this returns.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// A Matrix user name (localpart) as the spec allows it: lower case letters, digits and `._=-/+`.
fn parse_localpart(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a name has 1 to 64 characters".into());
    }
    match name.chars().find(|c| !is_localpart_char(*c)) {
        Some(c) => Err(format!(
            "{c:?} is not allowed in a name: use lower case letters, digits and . _ = - / +"
        )),
        None => Ok(name.to_owned()),
    }
}

fn is_localpart_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || "._=-/+".contains(c)
}

/// The login name, made into a valid localpart; "me" when there is none.
fn default_name() -> String {
    let login = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_default();
    let name: String = login
        .to_lowercase()
        .chars()
        .filter(|c| is_localpart_char(*c))
        .take(64)
        .collect();
    if name.is_empty() { "me".into() } else { name }
}

fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "hyphae").map(|dirs| dirs.data_dir().to_owned())
}

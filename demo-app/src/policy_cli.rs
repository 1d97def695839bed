//! `hyphae policy …`: the owner's policy lists from the command line. It acts on a running
//! `hyphae up` through that node's web UI API (`ui/policy.rs`), signed in as the page is: with
//! the secret in the data folder's `ui-secret`, sent as the cookie the page's link sets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

/// How long a request may take: subscribing joins a room, perhaps across the network.
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    action: PolicyAction,
    #[command(flatten)]
    node: RunningNode,
}

/// Which running `hyphae up` a command acts on.
#[derive(clap::Args)]
pub struct RunningNode {
    /// The running node's data folder (where its `ui-secret` is). Default: the platform's
    /// data folder, as for `hyphae up`.
    #[arg(long, value_name = "DIR", env = "HYPHAE_DATA", global = true)]
    data: Option<PathBuf>,
    /// Where the running node serves its API (`hyphae up --listen`).
    #[arg(long, value_name = "ADDR", default_value_t = hyphae_node::Config::DEFAULT_CLIENT_LISTEN, global = true)]
    api: SocketAddr,
}

impl RunningNode {
    /// A client of the node's web UI API, signed in with its data folder's secret.
    pub fn client(self) -> Result<UiClient, String> {
        let data = self
            .data
            .or_else(crate::default_data_dir)
            .ok_or("no platform data folder is known here; pass --data DIR")?;
        UiClient::new(&data, self.api)
    }
}

const KINDS: [&str; 3] = ["user", "room", "server"];
const LEVELS: [&str; 3] = ["hide", "blur", "warn"];

#[derive(Subcommand)]
enum PolicyAction {
    /// The lists you subscribe to (with their levels) and your own lists.
    List,
    /// Make a new policy list; prints its room id.
    Create {
        /// The list's name, as subscribers see it.
        name: String,
        /// A local alias to share it by: NAME becomes #NAME:<this server>.
        #[arg(long, value_name = "NAME")]
        alias: Option<String>,
    },
    /// Print a list's rules, one a line: kind, entity, reason (tab-separated).
    Rules {
        /// The list's room id or alias.
        list: String,
    },
    /// Add a ban to one of your lists (or change its reason).
    Ban {
        /// The list's room id or alias.
        list: String,
        /// What the rule bans.
        #[arg(value_parser = KINDS)]
        kind: String,
        /// A user id, room id or server name; * and ? match any characters (@spam*:*).
        entity: String,
        /// Why, shown to subscribers.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove a ban from one of your lists.
    Unban {
        list: String,
        #[arg(value_parser = KINDS)]
        kind: String,
        entity: String,
    },
    /// Share one of your lists with someone by inviting them to its room.
    Invite {
        list: String,
        /// @name:server
        user: String,
    },
    /// Subscribe to a list (or change the level of a subscription).
    Subscribe {
        /// The list's alias (#name:server) or room id.
        list: String,
        /// What the app does to what the list bans: hide it, blur it (shown collapsed with the
        /// reason, one click reveals it) or warn (shown, flagged).
        #[arg(long, default_value = "blur", value_parser = LEVELS)]
        level: String,
        /// A server in the list's room to join through (repeat for several); for a room id.
        #[arg(long, value_name = "SERVER")]
        via: Vec<String>,
    },
    /// End a subscription: what the list hid shows again.
    Unsubscribe { list: String },
}

pub fn run(args: PolicyArgs, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let client = match args.node.client() {
        Ok(client) => client,
        Err(e) => {
            eprintln!("hyphae: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(act(&client, args.action)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyphae: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A list as a path segment.
fn segment(list: &str) -> String {
    hyphae_node::urlencode(list.trim())
}

/// A string from the node, printable: lists come from other servers, and a name, entity or
/// reason there could carry terminal escapes (rewrite the title, write the clipboard), so
/// control characters are shown escaped.
fn text(value: &Value) -> String {
    printable(value.as_str().unwrap_or(""))
}

fn printable(remote: &str) -> String {
    remote
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A list in one line: its alias or room id, and its name.
fn describe(list: &Value) -> String {
    let id = list["alias"]
        .as_str()
        .map(|alias| format!("{} ({})", printable(alias), text(&list["room_id"])))
        .unwrap_or_else(|| text(&list["room_id"]));
    match list["name"].as_str() {
        Some(name) => format!("{id} \"{}\"", printable(name)),
        None => id,
    }
}

async fn act(client: &UiClient, action: PolicyAction) -> Result<(), String> {
    match action {
        PolicyAction::List => {
            let status = client.call("GET", "/policy", None).await?;
            let subscriptions = status["subscriptions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if subscriptions.is_empty() {
                println!("Subscriptions: none");
            } else {
                println!("Subscriptions:");
                for s in &subscriptions {
                    println!(
                        "  {:<5} {} ({}{})",
                        text(&s["level"]),
                        describe(s),
                        rules(s["rules"].as_u64().unwrap_or(0) as usize),
                        if s["mine"] == true { ", yours" } else { "" }
                    );
                }
            }
            let lists = status["lists"].as_array().cloned().unwrap_or_default();
            if lists.is_empty() {
                println!("Your lists: none (make one with: hyphae policy create NAME)");
            } else {
                println!("Your lists:");
                for list in &lists {
                    println!(
                        "  {} ({})",
                        describe(list),
                        rules(list["rules"].as_array().map_or(0, Vec::len))
                    );
                }
            }
        }
        PolicyAction::Create { name, alias } => {
            let list = client
                .call(
                    "POST",
                    "/policy/lists",
                    Some(json!({"name": name, "alias": alias})),
                )
                .await?;
            println!("{}", text(&list["room_id"]));
            eprintln!(
                "hyphae: made the policy list {}; share it by its {} or with hyphae policy invite",
                describe(&list),
                if list["alias"].is_string() {
                    "alias"
                } else {
                    "room id"
                }
            );
        }
        PolicyAction::Rules { list } => {
            let list = client
                .call("GET", &format!("/policy/lists/{}", segment(&list)), None)
                .await?;
            print_rules(&list);
        }
        PolicyAction::Ban {
            list,
            kind,
            entity,
            reason,
        } => {
            let view = client
                .call(
                    "POST",
                    &format!("/policy/lists/{}/rules", segment(&list)),
                    Some(json!({"kind": kind, "entity": entity, "reason": reason})),
                )
                .await?;
            eprintln!("hyphae: {} bans {kind} {entity}", describe(&view));
        }
        PolicyAction::Unban { list, kind, entity } => {
            let view = client
                .call(
                    "POST",
                    &format!("/policy/lists/{}/rules/remove", segment(&list)),
                    Some(json!({"kind": kind, "entity": entity})),
                )
                .await?;
            eprintln!("hyphae: {} no longer bans {kind} {entity}", describe(&view));
        }
        PolicyAction::Invite { list, user } => {
            client
                .call(
                    "POST",
                    &format!("/policy/lists/{}/invite", segment(&list)),
                    Some(json!({"user_id": user})),
                )
                .await?;
            eprintln!("hyphae: invited {user} to {list}");
        }
        PolicyAction::Subscribe { list, level, via } => {
            let status = client
                .call(
                    "POST",
                    "/policy/subscriptions",
                    Some(json!({"list": list, "level": level, "via": via})),
                )
                .await?;
            // The subscription is the one with this alias or id, or else the newest.
            let subscriptions = status["subscriptions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let found = subscriptions
                .iter()
                .find(|s| s["room_id"] == list.as_str() || s["alias"] == list.as_str())
                .or(subscriptions.last());
            if let Some(s) = found {
                println!("{}", text(&s["room_id"]));
                eprintln!(
                    "hyphae: subscribed to {} at level {}",
                    describe(s),
                    text(&s["level"])
                );
            }
        }
        PolicyAction::Unsubscribe { list } => {
            client
                .call(
                    "DELETE",
                    &format!("/policy/subscriptions/{}", segment(&list)),
                    None,
                )
                .await?;
            eprintln!("hyphae: unsubscribed from {list}");
        }
    }
    Ok(())
}

/// "1 rule", "3 rules".
pub fn rules(n: usize) -> String {
    format!("{n} rule{}", if n == 1 { "" } else { "s" })
}

fn print_rules(list: &Value) {
    let rules = list["rules"].as_array().cloned().unwrap_or_default();
    if rules.is_empty() {
        eprintln!("hyphae: {} has no rules", describe(list));
    }
    for rule in &rules {
        println!(
            "{}\t{}\t{}",
            text(&rule["kind"]),
            text(&rule["entity"]),
            text(&rule["reason"])
        );
    }
    if let Some(refused) = list["refused"].as_u64().filter(|n| *n > 0) {
        eprintln!("hyphae: subscribers refuse {refused} of its rules (too broad to apply)");
    }
}

/// The web UI's API of the node running at `addr`, signed in with its data folder's secret.
pub struct UiClient {
    http: reqwest::Client,
    addr: SocketAddr,
    data: PathBuf,
    cookie: String,
}

impl UiClient {
    pub fn new(data: &Path, addr: SocketAddr) -> Result<UiClient, String> {
        let path = data.join(crate::ui::SECRET_FILE);
        let secret = match std::fs::read_to_string(&path) {
            Ok(secret) => secret.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "no web UI key in {}: start the node with `hyphae up --data {}` (or pass \
                     the --data DIR it runs with)",
                    data.display(),
                    data.display()
                ));
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("no HTTP client: {e}"))?;
        Ok(UiClient {
            http,
            addr,
            data: data.to_owned(),
            // The page's cookie: one per port, as browsers share cookies across a host's ports.
            cookie: format!("hyphae_ui_{}={secret}", addr.port()),
        })
    }

    /// Calls `path` below `/app/api`; the JSON answer, or what went wrong in words.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut request = self
            .http
            .request(method, format!("http://{}/app/api{path}", self.addr))
            .header(reqwest::header::COOKIE, &self.cookie);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                format!(
                    "no hyphae node runs at {}: start one with `hyphae up`, or pass --api ADDR \
                     (the address `hyphae up` printed as its client API)",
                    self.addr
                )
            } else if e.is_timeout() {
                format!("the node at {} did not answer in time", self.addr)
            } else {
                format!("the node at {} could not be asked: {e}", self.addr)
            }
        })?;
        let status = response.status();
        let answer: Option<Value> = response.json().await.ok();
        if status.is_success() {
            return answer.ok_or_else(|| format!("the node at {} answered oddly", self.addr));
        }
        Err(match (status.as_u16(), answer) {
            (401, _) => format!(
                "the node at {} does not take the key in {}: is that folder its --data?",
                self.addr,
                self.data.join(crate::ui::SECRET_FILE).display()
            ),
            (_, Some(error)) if error["error"].is_string() => {
                format!("{} ({})", text(&error["error"]), text(&error["errcode"]))
            }
            (404, _) => format!(
                "the node at {} has no web UI (it runs with --no-app, or is not hyphae)",
                self.addr
            ),
            (status, _) => format!("the node at {} answered {status}", self.addr),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_one_path_segment() {
        assert_eq!(segment("#spam:abc"), "%23spam%3Aabc");
        assert_eq!(segment(" !room:x.y "), "%21room%3Ax.y");
    }

    #[test]
    fn no_secret_says_where_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let error = UiClient::new(dir.path(), "127.0.0.1:8008".parse().unwrap())
            .err()
            .unwrap();
        assert!(error.contains("hyphae up --data"), "{error}");
    }

    #[test]
    fn remote_strings_reach_the_terminal_without_escapes() {
        let list = serde_json::json!({
            "room_id": "!a:b", "alias": "#x\u{1b}]0;owned\u{7}:b",
            "name": "spam\u{1b}[2J\u{9b}31m",
        });
        let shown = describe(&list);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(
            shown,
            "#x\\u{1b}]0;owned\\u{7}:b (!a:b) \"spam\\u{1b}[2J\\u{9b}31m\""
        );
        assert_eq!(text(&serde_json::json!("tab\there")), "tab\\there");
    }
}

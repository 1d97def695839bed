//! `hyphae password`: sets the password the owner logs in with from Element or another Matrix
//! client on this device. It acts on the running `hyphae up` through its web UI's API, as
//! `hyphae policy` does. The password is read at a prompt that does not echo it, or from stdin
//! when that is not a terminal; never from the command line, where other users of the machine
//! could see it.

use std::io::IsTerminal;
use std::process::ExitCode;

use serde_json::json;

use crate::policy_cli::RunningNode;

#[derive(clap::Args)]
pub struct PasswordArgs {
    #[command(flatten)]
    node: RunningNode,
}

pub fn run(args: PasswordArgs, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let result = args.node.client().and_then(|client| {
        let password = read_password()?;
        runtime.block_on(client.call("POST", "/me/password", Some(json!({"password": password}))))
    });
    match result {
        Ok(me) => {
            let user = me["user_id"].as_str().unwrap_or("the owner");
            eprintln!("hyphae: {user} can now log in with this password from Matrix clients");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hyphae: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Twice at a prompt without echo, or one line of stdin.
fn read_password() -> Result<String, String> {
    let password = crate::secret::ask("New password: ")
        .map_err(|e| format!("cannot read the password: {e}"))?;
    if std::io::stdin().is_terminal()
        && crate::secret::ask("The same again: ")
            .map_err(|e| format!("cannot read the password: {e}"))?
            != password
    {
        return Err("the two passwords differ; nothing changed".into());
    }
    Ok(password)
}

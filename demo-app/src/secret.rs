//! Secrets `hyphae` takes at start (the backup token, the recovery key): from a file, from the
//! environment, or asked at a prompt that does not echo them (one line of stdin when stdin is no
//! terminal). Given on the command line they still work, with a warning: other users of the
//! machine can read a process's arguments (`ps`, `/proc/*/cmdline`), and the shell keeps them in
//! its history.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

/// Where one secret may come from, first found wins: the command line, a file, the environment
/// variable `env`, then the prompt.
pub struct Secret<'a> {
    /// What it is, for the prompt and errors ("the recovery key").
    pub what: &'a str,
    /// The command-line flag it could be given with, for the warning.
    pub flag: &'a str,
    pub given: Option<String>,
    pub file: Option<PathBuf>,
    pub env: &'a str,
}

impl Secret<'_> {
    /// The secret, trimmed of surrounding white space (a file's final line break).
    pub fn read(self) -> Result<String, String> {
        self.read_with(|name| std::env::var(name).ok(), ask)
    }

    fn read_with(
        self,
        env: impl Fn(&str) -> Option<String>,
        ask: impl FnOnce(&str) -> Result<String, String>,
    ) -> Result<String, String> {
        let what = self.what;
        let secret = if let Some(given) = self.given {
            eprintln!(
                "hyphae: {what} given on the command line can be read by other users of this \
                 machine and stays in your shell's history; prefer {flag}-file, {env}, or the \
                 prompt",
                flag = self.flag,
                env = self.env
            );
            given
        } else if let Some(file) = self.file {
            std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {what} from {}: {e}", file.display()))?
        } else if let Some(value) = env(self.env).filter(|v| !v.trim().is_empty()) {
            value
        } else {
            ask(&format!("{} (not shown): ", capitalised(what)))?
        };
        let secret = secret.trim().to_owned();
        if secret.is_empty() {
            return Err(format!("{what} is empty"));
        }
        Ok(secret)
    }
}

/// Asked at a prompt without echo, or one line of stdin when stdin is no terminal.
pub fn ask(prompt: &str) -> Result<String, String> {
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    rpassword::prompt_password(prompt).map_err(|e| format!("cannot read at the prompt: {e}"))
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(given: Option<&str>, file: Option<PathBuf>) -> Secret<'static> {
        Secret {
            what: "the recovery key",
            flag: "--recovery-key",
            given: given.map(str::to_owned),
            file,
            env: "HYPHAE_RECOVERY_KEY",
        }
    }

    #[test]
    fn the_flag_then_a_file_then_the_environment_then_the_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "from the file\n").unwrap();
        let env = |_: &str| Some("from the environment".to_owned());
        let no_env = |_: &str| None;
        let asked = |prompt: &str| {
            assert_eq!(prompt, "The recovery key (not shown): ");
            Ok("  asked \n".to_owned())
        };
        let never = |_: &str| -> Result<String, String> { panic!("asked") };
        let read = secret(Some("on the line"), Some(file.clone())).read_with(env, never);
        assert_eq!(read.unwrap(), "on the line");
        let read = secret(None, Some(file.clone())).read_with(env, never);
        assert_eq!(read.unwrap(), "from the file");
        assert_eq!(
            secret(None, None).read_with(env, never).unwrap(),
            "from the environment"
        );
        assert_eq!(
            secret(None, None).read_with(no_env, asked).unwrap(),
            "asked"
        );
        // Nothing at all, or a file that is not there: a clear error.
        let empty = secret(None, None).read_with(no_env, |_| Ok(String::new()));
        assert_eq!(empty.unwrap_err(), "the recovery key is empty");
        let missing = secret(None, Some(dir.path().join("none"))).read_with(no_env, never);
        assert!(
            missing
                .unwrap_err()
                .contains("cannot read the recovery key from")
        );
    }
}

//! Invitations: one-time subscription tokens an operator hands to a device. `create_invite`
//! needs no access to the (locked) store: it drops the token's hash in a file in the data
//! folder, which the server takes into its store when a device subscribes, so it works while
//! the server runs and while it does not.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::BackupError;

/// The folder (inside the data folder) where invitations wait to be taken into the store.
pub(crate) const INVITES_DIR: &str = "backup-invites";

/// The quota an invitation grants unless told otherwise: 1 GiB.
pub const DEFAULT_QUOTA: u64 = 1 << 30;

/// Makes a one-time token granting `quota_bytes`, records only its SHA-256 under `data_dir`,
/// and returns the token (shown once, never stored).
pub fn create_invite(data_dir: &Path, quota_bytes: u64) -> Result<String, BackupError> {
    let mut secret = [0u8; 32];
    let dir = data_dir.join(INVITES_DIR);
    let io = |source| BackupError::Invite {
        path: dir.clone(),
        source,
    };
    getrandom::fill(&mut secret).map_err(|e| io(std::io::Error::other(e.to_string())))?;
    let token = hex::encode(secret);
    let quota = i64::try_from(quota_bytes).unwrap_or(i64::MAX);
    std::fs::create_dir_all(&dir).map_err(io)?;
    // Written whole under a temporary name, then renamed: the server never reads half a file.
    let name = token_hash(&token);
    let temporary = dir.join(format!("{name}.tmp"));
    std::fs::write(&temporary, quota.to_string()).map_err(io)?;
    std::fs::rename(&temporary, dir.join(format!("{name}.invite"))).map_err(io)?;
    Ok(token)
}

/// How tokens are kept: the hex SHA-256 of the token as given.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Takes waiting invitations into the store (then removes their files). A file that cannot be
/// read is left for the operator, with a warning.
pub(crate) async fn import(store: &hyphae_store::Store, dir: &Path) -> Result<(), BackupError> {
    let folder = dir.to_owned();
    let waiting = tokio::task::spawn_blocking(move || waiting_invites(&folder))
        .await
        .map_err(|e| BackupError::Invite {
            path: dir.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(|source| BackupError::Invite {
            path: dir.to_owned(),
            source,
        })?;
    for (path, hash, quota) in waiting {
        // Into the store first: a crash between the two imports it again, which changes nothing.
        store.backup_add_token(hash, quota).await?;
        let removed = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::remove_file(path)
        })
        .await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::warn!(path = %path.display(), "cannot remove an imported invitation");
        }
    }
    Ok(())
}

/// The invitation files in `dir`: (path, token hash, quota).
fn waiting_invites(dir: &Path) -> std::io::Result<Vec<(std::path::PathBuf, String, i64)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut waiting = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("invite") {
            continue;
        }
        let hash = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
        let quota = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok());
        match (hash, quota) {
            (Some(hash), Some(quota)) if hash.len() == 64 => waiting.push((path, hash, quota)),
            _ => {
                tracing::warn!(path = %path.display(), "unreadable backup invitation; left as it is")
            }
        }
    }
    Ok(waiting)
}

/// A size as people write it: `500M`, `2G`, `1.5G`, `4096`, `10K` (powers of 1024; `B`, `iB`
/// suffixes allowed).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let upper = text.trim().to_ascii_uppercase();
    let number = upper.trim_end_matches("IB").trim_end_matches('B');
    let (digits, factor) = match number.chars().last() {
        Some('K') => (&number[..number.len() - 1], 1u64 << 10),
        Some('M') => (&number[..number.len() - 1], 1 << 20),
        Some('G') => (&number[..number.len() - 1], 1 << 30),
        Some('T') => (&number[..number.len() - 1], 1 << 40),
        _ => (number, 1),
    };
    let value: f64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size (try 500M or 2G)"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{text:?}: a size must be positive"));
    }
    Ok((value * factor as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2gib").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
    }

    #[tokio::test]
    async fn an_invitation_reaches_the_store_as_its_hash_only() {
        let dir = tempfile::tempdir().unwrap();
        let token = create_invite(dir.path(), 1234).unwrap();
        let store = hyphae_store::Store::open(dir.path().join("db"))
            .await
            .unwrap();
        import(&store, &dir.path().join(INVITES_DIR)).await.unwrap();
        assert!(
            std::fs::read_dir(dir.path().join(INVITES_DIR))
                .unwrap()
                .next()
                .is_none(),
            "imported files are removed"
        );
        let sub = store
            .backup_subscribe("s".into(), token_hash(&token))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sub.quota_bytes, 1234);
    }
}

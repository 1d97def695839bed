//! Accounts of local users, their devices, and the access tokens that log those devices in.

use rusqlite::{OptionalExtension, params};

use crate::error::{Result, StoreError};
use crate::keys::delete_device_keys;
use crate::{Store, now_ms};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub localpart: String,
    /// argon2id PHC string; `None` for an account with no password login.
    pub password_hash: Option<String>,
    pub created_ms: i64,
    pub deactivated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub device_id: String,
    pub display_name: Option<String>,
    pub created_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub last_seen_ip: Option<String>,
}

impl Device {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
        Ok(Device {
            device_id: row.get(0)?,
            display_name: row.get(1)?,
            created_ms: row.get(2)?,
            last_seen_ms: row.get(3)?,
            last_seen_ip: row.get(4)?,
        })
    }
}

/// A device being logged in, with the hash of its new access token.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub localpart: String,
    pub device_id: String,
    pub display_name: Option<String>,
    pub token_hash: Vec<u8>,
}

impl Store {
    pub async fn create_account(
        &self,
        localpart: String,
        password_hash: Option<String>,
    ) -> Result<Account> {
        self.write(move |conn| {
            let created_ms = now_ms();
            let inserted = conn.execute(
                "INSERT INTO accounts (localpart, password_hash, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (localpart) DO NOTHING",
                params![localpart, password_hash, created_ms],
            )?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists("account"));
            }
            Ok(Account {
                localpart,
                password_hash,
                created_ms,
                deactivated: false,
            })
        })
        .await
    }

    pub async fn account(&self, localpart: String) -> Result<Option<Account>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT localpart, password_hash, created_ms, deactivated
                     FROM accounts WHERE localpart = ?1",
                    [localpart],
                    |row| {
                        Ok(Account {
                            localpart: row.get(0)?,
                            password_hash: row.get(1)?,
                            created_ms: row.get(2)?,
                            deactivated: row.get(3)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    /// (display name, avatar URL) of a local user; `None` if the account does not exist.
    pub async fn profile(
        &self,
        localpart: String,
    ) -> Result<Option<(Option<String>, Option<String>)>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT p.displayname, p.avatar_url FROM accounts a
                     LEFT JOIN profiles p USING (localpart) WHERE a.localpart = ?1",
                    [localpart],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?)
        })
        .await
    }

    /// Sets the display name (`avatar: false`) or avatar URL (`avatar: true`).
    pub async fn set_profile_field(
        &self,
        localpart: String,
        avatar: bool,
        value: Option<String>,
    ) -> Result<()> {
        self.write(move |conn| {
            let column = if avatar { "avatar_url" } else { "displayname" };
            conn.execute(
                &format!(
                    "INSERT INTO profiles (localpart, {column}) VALUES (?1, ?2)
                     ON CONFLICT (localpart) DO UPDATE SET {column} = excluded.{column}"
                ),
                params![localpart, value],
            )
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::NotFound("account"),
                _ => e.into(),
            })?;
            Ok(())
        })
        .await
    }

    pub async fn set_password_hash(&self, localpart: String, password_hash: String) -> Result<()> {
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE accounts SET password_hash = ?2 WHERE localpart = ?1",
                params![localpart, password_hash],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound("account"));
            }
            Ok(())
        })
        .await
    }

    /// Creates (or, for a device id the account already has, re-logs in) a device with a new
    /// access token. Tokens of a re-logged-in device are replaced.
    pub async fn login_device(&self, device: NewDevice) -> Result<()> {
        self.write(move |conn| {
            let now = now_ms();
            conn.execute(
                "INSERT INTO devices (localpart, device_id, display_name, created_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (localpart, device_id) DO UPDATE
                 SET display_name = coalesce(excluded.display_name, display_name)",
                params![device.localpart, device.device_id, device.display_name, now],
            )
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::NotFound("account"),
                _ => e.into(),
            })?;
            conn.execute(
                "DELETE FROM access_tokens WHERE localpart = ?1 AND device_id = ?2",
                params![device.localpart, device.device_id],
            )?;
            conn.execute(
                "INSERT INTO access_tokens (token_hash, localpart, device_id, created_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![device.token_hash, device.localpart, device.device_id, now],
            )?;
            Ok(())
        })
        .await
    }

    /// The (localpart, device id) an access token belongs to.
    pub async fn device_for_token(&self, token_hash: Vec<u8>) -> Result<Option<(String, String)>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT localpart, device_id FROM access_tokens WHERE token_hash = ?1",
                    [token_hash],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?)
        })
        .await
    }

    pub async fn devices(&self, localpart: String) -> Result<Vec<Device>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT device_id, display_name, created_ms, last_seen_ms, last_seen_ip
                 FROM devices WHERE localpart = ?1 ORDER BY device_id",
            )?;
            let devices = statement
                .query_map([localpart], Device::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(devices)
        })
        .await
    }

    pub async fn device(&self, localpart: String, device_id: String) -> Result<Option<Device>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT device_id, display_name, created_ms, last_seen_ms, last_seen_ip
                     FROM devices WHERE localpart = ?1 AND device_id = ?2",
                    [localpart, device_id],
                    Device::from_row,
                )
                .optional()?)
        })
        .await
    }

    /// Sets a device's display name; returns whether the device exists.
    pub async fn rename_device(
        &self,
        localpart: String,
        device_id: String,
        display_name: Option<String>,
    ) -> Result<bool> {
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE devices SET display_name = ?3 WHERE localpart = ?1 AND device_id = ?2",
                params![localpart, device_id, display_name],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    /// Deletes every device of `user_id` but `keep` (all of them when `None`), with their tokens,
    /// inboxes and end-to-end keys. Returns how many went.
    pub async fn delete_devices_except(
        &self,
        user_id: String,
        keep: Option<String>,
    ) -> Result<u64> {
        self.write(move |conn| {
            let localpart = localpart_of(&user_id)?;
            delete_device_keys(conn, &user_id, "device_id IS NOT ?2", keep.as_deref())?;
            let deleted = conn.execute(
                "DELETE FROM devices WHERE localpart = ?1 AND device_id IS NOT ?2",
                params![localpart, keep],
            )?;
            Ok(deleted as u64)
        })
        .await
    }

    /// Deletes one device of `user_id` with its tokens, inbox and end-to-end keys. Returns
    /// whether it existed.
    pub async fn delete_device(&self, user_id: String, device_id: String) -> Result<bool> {
        self.write(move |conn| {
            let localpart = localpart_of(&user_id)?;
            delete_device_keys(conn, &user_id, "device_id = ?2", Some(&device_id))?;
            let deleted = conn.execute(
                "DELETE FROM devices WHERE localpart = ?1 AND device_id = ?2",
                params![localpart, device_id],
            )?;
            Ok(deleted > 0)
        })
        .await
    }
}

/// The localpart of a local user id (`@localpart:server`).
fn localpart_of(user_id: &str) -> Result<&str> {
    user_id
        .strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .map(|(localpart, _)| localpart)
        .ok_or(StoreError::NotFound("user id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "@alice:example";

    #[tokio::test]
    async fn accounts_devices_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();

        let created = store
            .create_account("alice".into(), Some("$argon2id$v=19$x".into()))
            .await
            .unwrap();
        assert_eq!(store.account("alice".into()).await.unwrap(), Some(created));
        assert!(matches!(
            store.create_account("alice".into(), None).await,
            Err(StoreError::AlreadyExists("account"))
        ));
        assert_eq!(store.account("bob".into()).await.unwrap(), None);

        let login = |token: &[u8]| NewDevice {
            localpart: "alice".into(),
            device_id: "PHONE".into(),
            display_name: Some("Alice's phone".into()),
            token_hash: token.to_vec(),
        };
        store.login_device(login(b"first")).await.unwrap();
        assert_eq!(
            store.device_for_token(b"first".to_vec()).await.unwrap(),
            Some(("alice".into(), "PHONE".into()))
        );
        // Logging the same device in again replaces its token.
        store.login_device(login(b"second")).await.unwrap();
        assert_eq!(
            store.device_for_token(b"first".to_vec()).await.unwrap(),
            None
        );
        assert!(
            store
                .device_for_token(b"second".to_vec())
                .await
                .unwrap()
                .is_some()
        );

        let devices = store.devices("alice".into()).await.unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].display_name.as_deref(), Some("Alice's phone"));

        // A device for an account that does not exist is refused, not half-written.
        let mut stray = login(b"stray");
        stray.localpart = "nobody".into();
        assert!(matches!(
            store.login_device(stray).await,
            Err(StoreError::NotFound("account"))
        ));
        assert_eq!(
            store.device_for_token(b"stray".to_vec()).await.unwrap(),
            None
        );

        assert!(
            store
                .delete_device(ALICE.into(), "PHONE".into())
                .await
                .unwrap()
        );
        assert_eq!(
            store.device_for_token(b"second".to_vec()).await.unwrap(),
            None
        );
        assert!(
            !store
                .delete_device(ALICE.into(), "PHONE".into())
                .await
                .unwrap()
        );

        for device in ["A", "B", "C"] {
            let mut new = login(device.as_bytes());
            new.device_id = device.into();
            store.login_device(new).await.unwrap();
        }
        let renamed = store.rename_device("alice".into(), "A".into(), Some("laptop".into()));
        assert!(renamed.await.unwrap());
        let a = store
            .device("alice".into(), "A".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.display_name.as_deref(), Some("laptop"));
        assert!(
            !store
                .rename_device("alice".into(), "Z".into(), None)
                .await
                .unwrap()
        );
        let deleted = store.delete_devices_except(ALICE.into(), Some("B".into()));
        assert_eq!(deleted.await.unwrap(), 2);
        let left = store.devices("alice".into()).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].device_id, "B");
        assert_eq!(
            store
                .delete_devices_except(ALICE.into(), None)
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn a_deleted_device_takes_its_keys_along() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.create_account("alice".into(), None).await.unwrap();
        for device in ["A", "B"] {
            store
                .login_device(NewDevice {
                    localpart: "alice".into(),
                    device_id: device.into(),
                    display_name: None,
                    token_hash: device.as_bytes().to_vec(),
                })
                .await
                .unwrap();
            store
                .write(move |c| {
                    c.execute(
                        "INSERT INTO device_keys (user_id, device_id, keys, stream_pos)
                         VALUES (?1, ?2, '{}', 1)",
                        params![ALICE, device],
                    )?;
                    c.execute(
                        "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key)
                         VALUES (?1, ?2, 'signed_curve25519', 'k', '{}')",
                        params![ALICE, device],
                    )?;
                    Ok(())
                })
                .await
                .unwrap();
        }
        assert!(store.delete_device(ALICE.into(), "A".into()).await.unwrap());
        let keys_left = |table: &'static str| {
            let store = store.clone();
            async move {
                store
                    .read(move |c| {
                        let mut s = c.prepare(&format!("SELECT device_id FROM {table}"))?;
                        Ok(s.query_map([], |r| r.get::<_, String>(0))?
                            .collect::<rusqlite::Result<Vec<_>>>()?)
                    })
                    .await
                    .unwrap()
            }
        };
        assert_eq!(keys_left("device_keys").await, ["B"]);
        assert_eq!(keys_left("one_time_keys").await, ["B"]);
        store
            .delete_devices_except(ALICE.into(), None)
            .await
            .unwrap();
        assert!(keys_left("device_keys").await.is_empty());
    }
}

//! Helpers of the crypto module: spreading work over the cores, signed JSON, random ids, and
//! sending to-device messages in bodies the API accepts.

use std::time::{SystemTime, UNIX_EPOCH};

use ruma::CanonicalJsonObject;
use ruma::signatures::to_canonical_json_string_for_signing;
use serde_json::{Value, json};
use vodozemac::{Ed25519PublicKey, Ed25519Signature};

use super::CryptoError;
use crate::app::cs::CsApi;

/// Below this many items per worker, a thread costs more than it saves.
const MIN_PER_WORKER: usize = 8;

/// `f` over `items` on every core (the calling thread is one of the workers), results in order.
/// Call it off the async workers (inside `spawn_blocking`).
pub(crate) fn parallel_map<T, R, F>(items: Vec<T>, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync,
{
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cores.min(items.len() / MIN_PER_WORKER).max(1);
    if workers == 1 {
        return items.into_iter().map(f).collect();
    }
    let per_worker = items.len().div_ceil(workers);
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(workers);
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(per_worker).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let mut chunks = chunks.into_iter();
    let mine = chunks.next().unwrap_or_default();
    let f = &f;
    std::thread::scope(|scope| {
        let others: Vec<_> = chunks
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out: Vec<R> = mine.into_iter().map(f).collect();
        for worker in others {
            match worker.join() {
                Ok(results) => out.extend(results),
                // A worker's panic is the caller's (spawn_blocking turns it into an error).
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// Runs `job` on tokio's blocking pool.
pub(super) async fn blocking<R: Send + 'static>(
    job: impl FnOnce() -> R + Send + 'static,
) -> Result<R, CryptoError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| CryptoError::Worker(e.to_string()))
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A random id (transaction ids, request ids): 16 random bytes in hex.
pub(super) fn random_id() -> Result<String, CryptoError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// The bytes a signature on `value` covers: its canonical JSON without `signatures` and
/// `unsigned`.
pub(super) fn signing_bytes(value: &Value) -> Option<String> {
    let object: CanonicalJsonObject = serde_json::from_value(value.clone()).ok()?;
    to_canonical_json_string_for_signing(&object).ok()
}

/// Whether `value` carries a valid signature of `key`, made by `user_id` as `ed25519:<key_name>`.
pub(super) fn verify_signed(
    value: &Value,
    user_id: &str,
    key_name: &str,
    key: &Ed25519PublicKey,
) -> bool {
    let Some(signature) = value["signatures"][user_id][format!("ed25519:{key_name}")].as_str()
    else {
        return false;
    };
    let (Ok(signature), Some(bytes)) = (
        Ed25519Signature::from_base64(signature),
        signing_bytes(value),
    ) else {
        return false;
    };
    key.verify(bytes.as_bytes(), &signature).is_ok()
}

/// Keeps one sendToDevice body under the API's 1 MiB limit, with room for the envelope.
const MAX_TO_DEVICE_BODY: usize = 768 * 1024;

/// A to-device message: (user, device id or `*`, content).
pub(super) type ToDevice = (String, String, Value);

/// Sends `messages` of `event_type`, as few sendToDevice requests as the body limit allows.
pub(super) async fn send_to_device(
    cs: &CsApi,
    event_type: &str,
    messages: Vec<ToDevice>,
) -> Result<(), CryptoError> {
    let mut body = serde_json::Map::new();
    let mut size = 0;
    let mut batches = Vec::new();
    for (user, device, content) in messages {
        // Measured on the content alone; ids and punctuation are small next to ciphertexts.
        let length = content.to_string().len() + user.len() + device.len() + 16;
        if size + length > MAX_TO_DEVICE_BODY && !body.is_empty() {
            batches.push(std::mem::take(&mut body));
            size = 0;
        }
        size += length;
        let by_device = body
            .entry(user)
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(by_device) = by_device {
            by_device.insert(device, content);
        }
    }
    if !body.is_empty() {
        batches.push(body);
    }
    for messages in batches {
        let txn = random_id()?;
        let path = format!("/v3/sendToDevice/{event_type}/{txn}");
        let _: Value = cs.put(&path, &json!({ "messages": messages })).await?;
    }
    Ok(())
}

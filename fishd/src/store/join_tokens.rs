//! Cluster join tokens in the state machine: created by an admin, used once by a
//! joining node, refused when unknown, expired or already used by another node.
//!
//! Only the token's SHA-256 digest is stored, so the replicated log, snapshots and
//! the redb file never hold a usable token. Refusals are [`Rejection`] values, never
//! storage errors: a replicated state machine must not stop on a business answer.
//! Nothing here reads a clock: commands carry `now`.

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::StoreError;
use super::command::{Outcome, Rejection, Response};
use super::tables::JOIN_TOKENS;

/// How long an expired token is kept so that using it says "expired" rather than
/// "unknown"; after that it is removed when the next token is made.
const KEEP_EXPIRED: time::Duration = time::Duration::days(1);

/// One join token as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenRecord {
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub created_by: String,
    /// The node that used it, once used.
    pub used_by: Option<String>,
    /// SHA-256 of the public key that node sent: only the same key may retry.
    #[serde(default)]
    pub used_key: Option<String>,
}

impl JoinTokenRecord {
    /// Why `node` with key digest `key` may not use this token at `now`, if it may not.
    /// A retry by the node that used it, with the same key, before expiry, is allowed
    /// (its answer was lost); anyone else gets a refusal.
    pub fn refusal(&self, node: &str, key: &str, now: OffsetDateTime) -> Option<Rejection> {
        if self.expires_at <= now {
            let at = self.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            return Some(Rejection::Expired(format!("join token expired at {at}")));
        }
        match (&self.used_by, &self.used_key) {
            (None, _) => None,
            (Some(by), Some(k)) if by == node && k == key => None,
            (Some(by), _) => Some(Rejection::Conflict(format!("join token was already used (by node {by:?})"))),
        }
    }

    /// Whether this is a used token retried by the node and key that used it.
    pub fn is_retry_of(&self, node: &str, key: &str) -> bool {
        self.used_by.as_deref() == Some(node) && self.used_key.as_deref() == Some(key)
    }
}

pub(super) fn create(
    txn: &WriteTransaction,
    digest: &str,
    expires_at: OffsetDateTime,
    created_by: &str,
    now: OffsetDateTime,
) -> Result<Outcome, StoreError> {
    let mut t = txn.open_table(JOIN_TOKENS)?;
    if t.get(digest)?.is_some() {
        // A replayed command, or (2^-256) a collision: either way nothing to change.
        return Ok(Ok(Response::Done));
    }
    let cutoff = now - KEEP_EXPIRED;
    t.retain(|_, v| serde_json::from_slice::<JoinTokenRecord>(v).map(|r| r.expires_at >= cutoff).unwrap_or(false))?;
    let record = JoinTokenRecord { expires_at, created_by: created_by.to_owned(), used_by: None, used_key: None };
    t.insert(digest, serde_json::to_vec(&record)?.as_slice())?;
    Ok(Ok(Response::Done))
}

pub(super) fn consume(
    txn: &WriteTransaction,
    digest: &str,
    node: &str,
    key: &str,
    now: OffsetDateTime,
) -> Result<Outcome, StoreError> {
    let mut t = txn.open_table(JOIN_TOKENS)?;
    let mut record = match t.get(digest)? {
        Some(v) => serde_json::from_slice::<JoinTokenRecord>(v.value())?,
        None => return Ok(Err(unknown())),
    };
    if let Some(refusal) = record.refusal(node, key, now) {
        return Ok(Err(refusal));
    }
    record.used_by = Some(node.to_owned());
    record.used_key = Some(key.to_owned());
    t.insert(digest, serde_json::to_vec(&record)?.as_slice())?;
    Ok(Ok(Response::Done))
}

/// The refusal of a token this cluster never made.
pub fn unknown() -> Rejection {
    Rejection::NotFound("join token is not known to this cluster (mistyped, forged, or made by another cluster)".into())
}

/// The record of the token with `digest`, if the cluster made it (a read: a join
/// with an unknown token is refused without writing to the replicated log).
pub(super) fn get(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    digest: &str,
) -> Result<Option<JoinTokenRecord>, StoreError> {
    Ok(match table.get(digest)? {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{Command, Store};
    use super::*;

    async fn run(s: &Store, c: Command) -> Outcome {
        tokio::time::timeout(std::time::Duration::from_secs(10), s.execute(c)).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_token_works_once_for_one_node_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).await.unwrap();
        let now = OffsetDateTime::now_utc();
        let mk = |d: &str, exp| Command::CreateJoinToken {
            digest: d.into(),
            expires_at: exp,
            created_by: "admin".into(),
            now,
        };
        let use_key = |d: &str, n: &str, k: &str, at| Command::ConsumeJoinToken {
            digest: d.into(),
            node: n.into(),
            key: k.into(),
            now: at,
        };
        let use_ = |d: &str, n: &str, at| use_key(d, n, "key-1", at);
        assert_eq!(run(&s, mk("a", now + time::Duration::hours(1))).await, Ok(Response::Done));
        assert!(matches!(run(&s, use_("zz", "b", now)).await, Err(Rejection::NotFound(_))));
        assert_eq!(run(&s, use_("a", "b", now)).await, Ok(Response::Done));
        // The same node with the same key again (a retried join) is fine; the same
        // name with another key (a stolen token) and another node are refused.
        assert_eq!(run(&s, use_("a", "b", now)).await, Ok(Response::Done));
        assert!(matches!(run(&s, use_key("a", "b", "key-2", now)).await, Err(Rejection::Conflict(_))));
        // After expiry not even the node that used it may retry.
        let expired = now + time::Duration::hours(2);
        assert!(matches!(run(&s, use_("a", "b", expired)).await, Err(Rejection::Expired(_))));
        match run(&s, use_("a", "c", now)).await {
            Err(Rejection::Conflict(m)) => assert!(m.contains("already used") && m.contains("\"b\""), "{m}"),
            other => panic!("{other:?}"),
        }
        run(&s, mk("e", now + time::Duration::minutes(1))).await.unwrap();
        let later = now + time::Duration::minutes(2);
        assert!(matches!(run(&s, use_("e", "c", later)).await, Err(Rejection::Expired(_))));
        // A token made two days later sweeps long-expired ones away.
        let much_later = now + time::Duration::days(2);
        let c = Command::CreateJoinToken {
            digest: "n".into(),
            expires_at: much_later + time::Duration::hours(1),
            created_by: "admin".into(),
            now: much_later,
        };
        run(&s, c).await.unwrap();
        assert!(matches!(run(&s, use_("e", "c", much_later)).await, Err(Rejection::NotFound(_))));
    }
}

//! The answers remembered for command ids ([`DEDUP`]): what a retried proposal (a
//! forwarded write whose outcome was unknown, sent again under its id) is answered
//! instead of being applied twice.
//!
//! # Format
//! A [`DEDUP_POSTCARD`] byte and the postcard of [`Remembered`]. A status write's answer
//! used to be the whole application as JSON, inside a JSON string (so printed twice and
//! escaped), on every node for every write, and read back almost never; now an
//! application (or node) answer is its key, and the object is read when a retry asks.
//! Answers an older fishd wrote are `Applied` JSON (first byte `{`) and still read.
//!
//! # Guarantees
//! - Deterministic: a retry's answer is made from the replicated state as the retry's
//!   entry finds it, the same on every node and on a replay.
//! - A retry gets the object as it is stored when the retry is applied: the state the
//!   write left or a later one (never an earlier one). If it is gone since, the retry is
//!   answered `NotFound`, as a write arriving then would be.
//! - A backup or snapshot holds each answer as JSON ([`to_json`]) and a load stores it
//!   back ([`from_json`]); an old-format answer goes through as it was.

use api_types::Node;
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StoreError;
use super::command::{Outcome, Rejection, Response};
use super::raft::Applied;
use super::tables::{APPS, NODES};

/// The first byte of an answer stored as postcard (see the module).
const DEDUP_POSTCARD: u8 = 0x01;

/// One remembered answer, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Remembered {
    /// The log index the command was applied at.
    index: u64,
    answer: Answer,
}

/// An outcome, with objects by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Answer {
    /// `Ok(Response::Application)`: the application of this uid.
    Application(Uuid),
    /// `Ok(Response::Node)`: the node of this name.
    Node(String),
    /// `Ok(Response::Done)`.
    Done,
    /// Any other outcome (apply results, a user, a rejection: small) as its JSON text.
    Json(String),
}

/// The stored form of `applied`.
pub(super) fn remember(applied: &Applied) -> Result<Vec<u8>, StoreError> {
    let answer = match &applied.outcome {
        Ok(Response::Application(app)) if app.metadata.uid.is_some() => {
            Answer::Application(app.metadata.uid.unwrap_or_default())
        }
        Ok(Response::Node(node)) => Answer::Node(node.metadata.name_str().to_owned()),
        Ok(Response::Done) => Answer::Done,
        other => Answer::Json(serde_json::to_string(other)?),
    };
    postcard::to_extend(&Remembered { index: applied.index, answer }, vec![DEDUP_POSTCARD])
        .map_err(StoreError::CorruptRecord)
}

/// The answer of a retried proposal, from its stored form (of this fishd or an older
/// one) and the state as `txn` sees it.
pub(super) fn recall(txn: &WriteTransaction, bytes: &[u8]) -> Result<Applied, StoreError> {
    let Some((&DEDUP_POSTCARD, rest)) = bytes.split_first() else {
        return Ok(serde_json::from_slice(bytes)?);
    };
    let Remembered { index, answer } = postcard::from_bytes(rest).map_err(StoreError::CorruptRecord)?;
    let outcome: Outcome = match answer {
        Answer::Application(uid) => match super::state::read_app(&txn.open_table(APPS)?, uid.as_u128())? {
            Some(app) => Ok(Response::Application(Box::new(app))),
            None => Err(Rejection::NotFound(format!("application {uid} not found"))),
        },
        Answer::Node(name) => match txn.open_table(NODES)?.get(name.as_str())? {
            Some(v) => Ok(Response::Node(Box::new(serde_json::from_slice::<Node>(v.value())?))),
            None => Err(Rejection::NotFound(format!("node {name:?} not found"))),
        },
        Answer::Done => Ok(Response::Done),
        Answer::Json(text) => serde_json::from_str(&text)?,
    };
    Ok(Applied { index, outcome })
}

/// A stored answer as a backup holds it: JSON, whichever format it is stored in.
pub(super) fn to_json(bytes: &[u8]) -> Result<serde_json::Value, StoreError> {
    match bytes.split_first() {
        Some((&DEDUP_POSTCARD, rest)) => {
            Ok(serde_json::to_value(postcard::from_bytes::<Remembered>(rest).map_err(StoreError::CorruptRecord)?)?)
        }
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// A backup's answer as it is stored: an answer of this format back in postcard, one
/// of an older fishd (an `Applied`) as its JSON.
pub(super) fn from_json(v: &serde_json::Value) -> Result<Vec<u8>, StoreError> {
    match serde_json::from_value::<Remembered>(v.clone()) {
        Ok(r) => postcard::to_extend(&r, vec![DEDUP_POSTCARD]).map_err(StoreError::CorruptRecord),
        Err(_) => Ok(serde_json::to_vec(v)?),
    }
}

#[cfg(test)]
mod tests {
    use api_types::Application;

    use super::*;

    fn app(uid: Uuid) -> Application {
        let mut a: Application = serde_json::from_value(serde_json::json!({
            "apiVersion": "aquarium.fish/v1", "kind": "Application",
            "metadata": {"name": "a1"}, "spec": {"label": "l"}
        }))
        .expect("application");
        a.metadata.uid = Some(uid);
        a
    }

    #[test]
    fn an_application_answer_is_its_uid_and_round_trips_a_backup() {
        let uid = Uuid::now_v7();
        let applied = Applied { index: 7, outcome: Ok(Response::Application(Box::new(app(uid)))) };
        let bytes = remember(&applied).expect("remember");
        let stored: Remembered = postcard::from_bytes(&bytes[1..]).expect("postcard");
        assert_eq!(stored, Remembered { index: 7, answer: Answer::Application(uid) });
        assert!(bytes.len() < 40, "{} bytes", bytes.len());
        let json = to_json(&bytes).expect("to json");
        assert_eq!(from_json(&json).expect("from json"), bytes);
    }

    #[test]
    fn an_old_answer_goes_through_a_backup_as_it_was() {
        let old = serde_json::json!({"index": 3, "outcome": "{\"Ok\":\"Done\"}"});
        let bytes = serde_json::to_vec(&old).expect("json");
        assert_eq!(to_json(&bytes).expect("to json"), old);
        assert_eq!(from_json(&old).expect("from json"), bytes);
    }
}

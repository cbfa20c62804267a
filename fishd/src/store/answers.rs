//! Answers handed from the state machine straight to the writers waiting on this node.
//!
//! openraft answers a `client_write`, and publishes the applied index in its metrics,
//! from its core task once the state machine reports the apply. That task also runs
//! every log append, fsync included, inline: under load a write's answer, and a
//! follower's read-your-writes wait, sat behind whatever append the core was doing
//! (about 3.5 ms each in the 3-node burst). The state machine knows both facts the
//! moment its transaction commits, so it tells them here, and the writers listen here.
//!
//! Nothing in the replicated state depends on this: it is told only after the commit,
//! and what it holds (who waits, the index applied so far) is this process's alone.
//! openraft's own answer still comes and is used whenever this one does not (a write
//! that failed, or a waiter replaced by a second wait on the same proposal id).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::raft::Applied;

/// The waiters of proposals this node leads, and the log index applied here.
#[derive(Debug)]
pub struct Answers {
    waiting: Mutex<HashMap<Uuid, oneshot::Sender<Applied>>>,
    applied: watch::Sender<u64>,
}

impl Default for Answers {
    fn default() -> Self {
        Answers { waiting: Mutex::default(), applied: watch::Sender::new(0) }
    }
}

impl Answers {
    /// The answer of proposal `id` once it is applied here. A second wait on the same
    /// id takes the place of the first, whose receiver then closes.
    pub fn expect(&self, id: Uuid) -> oneshot::Receiver<Applied> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    /// Stops waiting for these proposals (answered by openraft, or given up).
    pub fn forget(&self, ids: impl IntoIterator<Item = Uuid>) {
        let mut waiting = self.lock();
        for id in ids {
            waiting.remove(&id);
        }
    }

    /// Called by the state machine after the commit that applied entries up to `index`:
    /// each proposal in `applied` (id, answer) that someone waits for gets its answer.
    pub(super) fn applied<'a>(&self, index: u64, applied: impl IntoIterator<Item = (Uuid, &'a Applied)>) {
        {
            let mut waiting = self.lock();
            if !waiting.is_empty() {
                for (id, answer) in applied {
                    if let Some(tx) = waiting.remove(&id) {
                        // The waiter gave up: nothing to do.
                        let _ = tx.send(answer.clone());
                    }
                }
            }
        }
        self.applied_up_to(index);
    }

    /// The state here now reflects the log up to `index` (an apply, a snapshot
    /// installed, or the state found at start). Never moves back.
    pub(super) fn applied_up_to(&self, index: u64) {
        self.applied.send_if_modified(|i| {
            let newer = index > *i;
            if newer {
                *i = index;
            }
            newer
        });
    }

    /// Waits until the entry at `index` is applied here, up to `deadline`: `false` if
    /// it was not by then.
    pub async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout_at(deadline, rx.wait_for(|&i| i >= index)).await.is_ok_and(|r| r.is_ok())
    }

    /// Whether nobody waits (tests: no waiter outlives its write).
    #[cfg(test)]
    pub(super) fn lock_is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<Applied>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::command::Response;

    fn done(index: u64) -> Applied {
        Applied { index, outcome: Ok(Response::Done) }
    }

    #[tokio::test]
    async fn a_waiter_gets_its_answer_and_others_are_left_alone() {
        let answers = Answers::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let rx = answers.expect(a);
        let other = answers.expect(b);
        answers.applied(3, [(a, &done(3)), (Uuid::now_v7(), &done(3))]);
        assert_eq!(rx.await.expect("answered").index, 3);
        answers.forget([b]);
        assert!(other.await.is_err(), "a forgotten waiter is closed, not answered");
        assert!(answers.lock_is_empty());
    }

    #[tokio::test]
    async fn a_second_wait_on_one_id_replaces_the_first() {
        let answers = Answers::default();
        let id = Uuid::now_v7();
        let first = answers.expect(id);
        let second = answers.expect(id);
        answers.applied(5, [(id, &done(5))]);
        assert!(first.await.is_err());
        assert_eq!(second.await.expect("answered").index, 5);
    }

    #[tokio::test]
    async fn the_applied_index_only_moves_forward_and_wakes_waiters() {
        let answers = std::sync::Arc::new(Answers::default());
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        assert!(!answers.wait_applied(1, soon).await, "nothing applied yet");
        let waiter = {
            let answers = answers.clone();
            tokio::spawn(async move {
                answers.wait_applied(7, tokio::time::Instant::now() + std::time::Duration::from_secs(10)).await
            })
        };
        answers.applied_up_to(7);
        answers.applied_up_to(2);
        assert!(waiter.await.expect("joined"));
        assert_eq!(*answers.applied.borrow(), 7);
    }
}

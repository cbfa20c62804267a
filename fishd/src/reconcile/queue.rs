//! A work queue keyed by application uid, after kube-runtime's scheduler.
//!
//! # Guarantees
//! - A uid queued several times runs once, at the earliest time asked for.
//! - One uid is never reconciled twice at once: a uid queued while it runs is run
//!   again after the running reconcile ends.
//! - At most `concurrency` reconciles run at once.
//! - Once `stop` is cancelled, no reconcile starts, not even one already waiting for
//!   a slot: a draining node begins no new work.
//! - A reconcile that panics is run again (after a minute), never stranded as running.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::{DelayQueue, delay_queue};
use uuid::Uuid;

/// When a reconcile that panicked (and did not catch it itself) runs again.
const PANIC_RETRY: Duration = Duration::from_secs(60);
/// Messages taken from the channel in one go before the scheduler looks at its other
/// inputs (a burst of thousands must not hold up finished reconciles).
const BATCH: usize = 1024;

/// Handle to enqueue work; cheap to clone.
#[derive(Clone, Debug)]
pub struct Queue {
    tx: mpsc::UnboundedSender<(Uuid, Instant)>,
}

impl Queue {
    /// Runs `uid` now.
    pub fn now(&self, uid: Uuid) {
        self.at(uid, Instant::now());
    }

    /// Runs `uid` at `when` (or earlier, if it is already queued earlier).
    pub fn at(&self, uid: Uuid, when: Instant) {
        // The scheduler only stops at shutdown, when new work is moot.
        let _ = self.tx.send((uid, when));
    }
}

/// Starts the scheduler; `work(uid)` runs one reconcile and returns when to run
/// again (`None`: only when triggered). Returns the handle and the scheduler's task.
pub fn start<F, Fut>(
    concurrency: usize,
    tracker: TaskTracker,
    stop: CancellationToken,
    work: F,
) -> (Queue, tokio::task::JoinHandle<()>)
where
    F: Fn(Uuid) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Duration>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Queue { tx };
    let handle = tokio::spawn(run(rx, concurrency, tracker, stop, Arc::new(work)));
    (queue, handle)
}

async fn run<F, Fut>(
    mut rx: mpsc::UnboundedReceiver<(Uuid, Instant)>,
    concurrency: usize,
    tracker: TaskTracker,
    stop: CancellationToken,
    work: Arc<F>,
) where
    F: Fn(Uuid) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Duration>> + Send + 'static,
{
    let mut delays: DelayQueue<Uuid> = DelayQueue::new();
    let mut keys: HashMap<Uuid, (delay_queue::Key, Instant)> = HashMap::new();
    let mut running: HashSet<Uuid> = HashSet::new();
    // Work asked for while a uid runs: its earliest time.
    let mut deferred: HashMap<Uuid, Instant> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Uuid, Option<Duration>)>();
    let permits = Arc::new(Semaphore::new(concurrency));

    let schedule =
        |delays: &mut DelayQueue<Uuid>, keys: &mut HashMap<Uuid, (delay_queue::Key, Instant)>, uid, when| match keys
            .get(&uid)
        {
            Some((_, at)) if *at <= when => {}
            Some((key, _)) => {
                delays.reset_at(key, when);
                keys.insert(uid, (*key, when));
            }
            None => {
                let key = delays.insert_at(uid, when);
                keys.insert(uid, (key, when));
            }
        };

    // Starts `uid`'s reconcile (it waits for a slot in its own task).
    let launch = |uid: Uuid, running: &mut HashSet<Uuid>| {
        running.insert(uid);
        let permits = permits.clone();
        let work = work.clone();
        let done = done_tx.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let permit = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                p = permits.acquire_owned() => p,
            };
            let Ok(_permit) = permit else { return };
            let next = match AssertUnwindSafe(work(uid)).catch_unwind().await {
                Ok(next) => next,
                Err(_) => {
                    tracing::error!(%uid, "reconcile panicked; running it again in a minute");
                    Some(PANIC_RETRY)
                }
            };
            let _ = done.send((uid, next));
        });
    };

    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            msg = rx.recv() => {
                let Some(first) = msg else { return };
                // Everything already sent is taken together, so a uid queued several
                // times at once runs once. Work due now starts here rather than through
                // the delay queue: its timer ticks in whole milliseconds, which put a
                // millisecond or two into every allocation's path (ELECTED → driver).
                let mut due: Vec<Uuid> = Vec::new();
                let mut seen: HashSet<Uuid> = HashSet::new();
                let mut next = Some(first);
                let mut taken = 0;
                while let Some((uid, when)) = next {
                    if running.contains(&uid) {
                        let e = deferred.entry(uid).or_insert(when);
                        *e = (*e).min(when);
                    } else if when <= Instant::now() {
                        if let Some((key, _)) = keys.remove(&uid) {
                            delays.remove(&key);
                        }
                        if seen.insert(uid) {
                            due.push(uid);
                        }
                    } else if !seen.contains(&uid) {
                        schedule(&mut delays, &mut keys, uid, when);
                    }
                    taken += 1;
                    next = if taken < BATCH { rx.try_recv().ok() } else { None };
                }
                for uid in due {
                    launch(uid, &mut running);
                }
            }
            Some(expired) = delays.next(), if !delays.is_empty() => {
                let uid = expired.into_inner();
                keys.remove(&uid);
                launch(uid, &mut running);
            }
            Some((uid, next)) = done_rx.recv() => {
                running.remove(&uid);
                let mut when = next.map(|d| Instant::now() + d);
                if let Some(d) = deferred.remove(&uid) {
                    when = Some(when.map_or(d, |w| w.min(d)));
                }
                match when {
                    Some(when) if when <= Instant::now() => launch(uid, &mut running),
                    Some(when) => schedule(&mut delays, &mut keys, uid, when),
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn deduplicates_and_never_runs_one_uid_twice_at_once() {
        let runs = Arc::new(AtomicUsize::new(0));
        let concurrent = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(Mutex::new(0));
        let (r, c, m) = (runs.clone(), concurrent.clone(), max_seen.clone());
        let (q, _h) = start(8, TaskTracker::new(), CancellationToken::new(), move |_uid| {
            let (r, c, m) = (r.clone(), c.clone(), m.clone());
            async move {
                let now = c.fetch_add(1, Ordering::SeqCst) + 1;
                {
                    let mut mx = m.lock().unwrap();
                    *mx = (*mx).max(now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                c.fetch_sub(1, Ordering::SeqCst);
                r.fetch_add(1, Ordering::SeqCst);
                None
            }
        });
        let uid = Uuid::now_v7();
        for _ in 0..10 {
            q.now(uid);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Queued while running: runs once more afterwards.
        q.now(uid);
        q.now(uid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(*max_seen.lock().unwrap(), 1);
    }

    /// Work due now starts at once: not on the delay queue's next millisecond tick,
    /// which every allocation would wait for between its election and its driver.
    /// With the clock paused, a timer can only fire by the clock moving on; the clock
    /// stands between two milliseconds, as it always does in real life.
    #[tokio::test(start_paused = true)]
    async fn work_due_now_starts_without_waiting_for_a_timer_tick() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (q, _h) = start(8, TaskTracker::new(), CancellationToken::new(), move |uid| {
            let _ = tx.send((uid, Instant::now()));
            async { None }
        });
        for _ in 0..3 {
            tokio::time::advance(Duration::from_micros(300)).await;
            let (uid, asked) = (Uuid::now_v7(), Instant::now());
            q.now(uid);
            let (ran, at) = rx.recv().await.unwrap();
            assert_eq!(ran, uid);
            assert_eq!(at, asked, "the reconcile waited for the clock to move");
        }
        // Later work still waits for its time.
        let (uid, asked) = (Uuid::now_v7(), Instant::now());
        q.at(uid, asked + Duration::from_secs(5));
        let (_, at) = rx.recv().await.unwrap();
        assert!(at >= asked + Duration::from_secs(5), "ran before its time");
    }

    #[tokio::test(start_paused = true)]
    async fn work_waiting_for_a_slot_does_not_start_after_stop() {
        let started = Arc::new(Mutex::new(Vec::new()));
        let s = started.clone();
        let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
        let (q, _h) = start(1, tracker.clone(), stop.clone(), move |uid| {
            s.lock().unwrap().push(uid);
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                None
            }
        });
        let (first, waiting) = (Uuid::now_v7(), Uuid::now_v7());
        q.now(first);
        while started.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        q.now(waiting);
        // The second is spawned and waits for the one slot.
        while tracker.len() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(60), tracker.wait()).await.unwrap();
        assert_eq!(*started.lock().unwrap(), vec![first], "work started after stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_reconcile_is_run_again() {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let (q, _h) = start(8, TaskTracker::new(), CancellationToken::new(), move |_uid| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(n > 0, "first run panics");
                None
            }
        });
        q.now(Uuid::now_v7());
        let deadline = Instant::now() + Duration::from_secs(300);
        while runs.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "a panicked uid was never run again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requeues_after_the_returned_delay() {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let (q, _h) = start(8, TaskTracker::new(), CancellationToken::new(), move |_uid| {
            let r = r.clone();
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst);
                if n < 2 { Some(Duration::from_secs(5)) } else { None }
            }
        });
        q.now(Uuid::now_v7());
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}

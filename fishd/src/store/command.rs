//! The commands that change state, and their answers.
//!
//! Every change to state is one of these, applied by the state machine in
//! [`super::state`]. Commands carry everything that is not deterministic (uids,
//! timestamps, password hashes), so a replicated log can feed the same commands to
//! every node and get the same state. Business outcomes (not found, conflict) are
//! values in [`Outcome`], never storage errors.

use api_types::{Application, ApplicationStatus, ApplyResult, FieldError, Label, Node, Phase, User};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// A user as stored: the public object plus its secrets' digests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Never carries `spec.password` or `status.token`.
    pub user: User,
    /// argon2id PHC string.
    pub password_hash: Option<String>,
    /// Hex SHA-256 of the API token.
    pub token_digest: String,
}

/// One document of an apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Short-lived (one apply) and moved, not copied: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum ApplyItem {
    /// `uid` is used only if this makes a new version.
    Label { label: Label, uid: Uuid },
    /// `uid` is used only when the application is new.
    Application { app: Application, uid: Uuid },
    /// `uid` is used only when the user is new.
    User { record: UserRecord, uid: Uuid },
}

/// A change to state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// All items or none: every item is checked before any is written.
    Apply {
        items: Vec<ApplyItem>,
        owner: String,
        now: OffsetDateTime,
    },
    /// An apply under an applyset (`fishctl apply --applyset NAME [--prune]`): the
    /// labels and users applied become members of `set`; with `prune`, members of
    /// `set` not among `items` are deleted. All or nothing, like [`Command::Apply`].
    ApplySet {
        set: String,
        prune: bool,
        items: Vec<ApplyItem>,
        owner: String,
        now: OffsetDateTime,
    },
    /// Ask for deallocation; NEW applications end at once, ELECTED ones go to
    /// DEALLOCATE (their allocation may be under way).
    RequestDeallocate {
        uid: Uuid,
        by: String,
        now: OffsetDateTime,
    },
    /// A reconciler's status write, applied only if the phase is still `expect` and,
    /// when `expect_node` is set, the application is still on that node
    /// (compare-and-set, so a late allocation never overwrites a deallocation, and a
    /// stale node never moves an application elected to another node since).
    SetApplicationStatus {
        uid: Uuid,
        expect: Phase,
        status: Box<ApplicationStatus>,
        #[serde(default)]
        expect_node: Option<String>,
    },
    /// Remove a finished application for good.
    PurgeApplication {
        uid: Uuid,
    },
    /// Remove one version of a label, or all of them.
    DeleteLabel {
        name: String,
        version: Option<u32>,
    },
    /// Replace a user's token digest (rotation).
    SetUserToken {
        name: String,
        token_digest: String,
    },
    /// Create one user; refused with a conflict if the name is taken (the check and the
    /// write are one step, so a concurrent duplicate cannot overwrite it).
    CreateUser {
        record: Box<UserRecord>,
        uid: Uuid,
        now: OffsetDateTime,
    },
    DeleteUser {
        name: String,
    },
    /// A node's self-reported status (heartbeat, drivers, capacity).
    PutNode {
        node: Box<Node>,
    },
    SetMaintenance {
        node: String,
        enabled: bool,
    },
    /// The leader's verdict on a node, proposed when it changes: `ready` = it answered
    /// Raft's traffic within `nodeTimeout`. Not heard: its ELECTED, ALLOCATED and
    /// DEALLOCATE applications go to ERROR "node lost: <node> (<reason>)" at `now`, in
    /// the same step. `last_seen`: when the leader last heard it, if known.
    SetNodeReady {
        node: String,
        ready: bool,
        reason: String,
        last_seen: Option<OffsetDateTime>,
        now: OffsetDateTime,
    },
    /// Forget a node removed from the cluster: refused (as a value) while it still
    /// holds applications (ELECTED, ALLOCATED or DEALLOCATE on it).
    DeleteNode {
        node: String,
    },
    /// A node's votes for NEW applications (see [`super::ballots`]): a round closes,
    /// and its winner is ELECTED, when every ready node has voted.
    Vote {
        node: String,
        votes: Vec<super::ballots::BallotVote>,
        now: OffsetDateTime,
    },
    /// The leader closes rounds open past the vote deadline: the winner is chosen
    /// among the votes there are.
    CloseRounds {
        uids: Vec<Uuid>,
        now: OffsetDateTime,
        /// The nodes the leader hears now (`None`: it does not know): only their votes
        /// count, so a node that died after voting is not elected before it is
        /// declared lost.
        #[serde(default)]
        heard: Option<Vec<String>>,
    },
    /// A gate received a CI event (contract section 12): applied once per delivery
    /// GUID, moving the job's rank forward only.
    GateEvent {
        gate: String,
        guid: String,
        job: Box<super::gates::GateJobEvent>,
        now: OffsetDateTime,
    },
    /// A gate's runner registration for one application (`None`: removed).
    GatePutRunner {
        gate: String,
        uid: Uuid,
        runner: Option<Box<super::gates::GateRunner>>,
    },
    /// A gate forgets jobs, and delivery GUIDs older than `deliveries_before`.
    GateForget {
        gate: String,
        jobs: Vec<u64>,
        deliveries_before: Option<OffsetDateTime>,
    },
    /// Record a new cluster join token by its digest (the token itself is never stored).
    CreateJoinToken {
        digest: String,
        expires_at: OffsetDateTime,
        created_by: String,
        now: OffsetDateTime,
    },
    /// Use a join token for `node` whose CSR holds the key with digest `key`: refused
    /// (as a value) when unknown, expired, or used by another node or key; the same
    /// node with the same key may use it again before expiry, so a join retried after
    /// a lost answer still succeeds while a stolen token cannot be replayed.
    ConsumeJoinToken {
        digest: String,
        node: String,
        #[serde(default)]
        key: String,
        now: OffsetDateTime,
    },
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Applied(Vec<ApplyResult>),
    Application(Box<Application>),
    Node(Box<Node>),
    /// The user as stored (without secrets).
    User(Box<User>),
    Done,
}

/// Why a command was refused; nothing was written.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum Rejection {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Invalid { message: String, errors: Vec<FieldError> },
    /// A compare-and-set found another phase: someone else moved the application on.
    #[error("application is {actual}, not {expected}")]
    PhaseChanged { expected: Phase, actual: Phase },
    /// A compare-and-set found the application on another node (or on none).
    #[error("application is on node {actual:?}, not {expected:?}")]
    NodeChanged { expected: Option<String>, actual: Option<String> },
    /// Something time-limited (a join token) is past its expiry.
    #[error("{0}")]
    Expired(String),
}

/// A command's answer: a response, or the business reason it was refused.
pub type Outcome = Result<Response, Rejection>;

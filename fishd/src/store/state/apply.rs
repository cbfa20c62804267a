//! `Command::Apply`: many documents, all or nothing.
//!
//! # Guarantees
//! - Every item is planned (checked against the stored state and the items planned
//!   before it) before any is written, so a rejected apply writes nothing.
//! - Labels are planned before applications, whatever their order in the manifest, so
//!   an application may use a label created by the same apply; results keep the
//!   documents' order.
//!
//! One function plans each item kind (`plan_label`, `plan_application`, `plan_user`)
//! and one writes each kind of plan.

use std::collections::{HashMap, HashSet};

use api_types::{
    Application, ApplicationStatus, ApplyAction, ApplyResult, HistoryEntry, Label, ObjectMeta, Phase, WatchEventType,
};
use redb::{ReadableTable, Table};
use time::OffsetDateTime;
use uuid::Uuid;

use super::super::command::{ApplyItem, Outcome, Rejection, Response, UserRecord};
use super::super::tables::*;
use super::super::{Kind, StoreError, phase_code};
use super::{Tx, invalid, read_app, read_label, read_user, write_user};

/// What the check phase of an apply decided for one item.
#[allow(clippy::large_enum_variant)] // lives for one apply
enum Plan {
    Unchanged(ApplyResult),
    NewLabel { label: Label, result: ApplyResult },
    NewApp { app: Application, label: Label, result: ApplyResult },
    PutUser { record: UserRecord, result: ApplyResult },
}

/// The tables an apply reads while planning, and what it planned so far.
struct Planner<'t> {
    labels: Table<'t, (&'static str, u32), &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    names: Table<'t, &'static str, u128>,
    apps: Table<'t, u128, &'static [u8]>,
    users: Table<'t, &'static str, &'static [u8]>,
    owner: &'t str,
    now: OffsetDateTime,
    /// Labels planned earlier in this apply, by name (the newest planned version).
    labels_planned: HashMap<String, Label>,
    /// Application names planned earlier in this apply.
    names_planned: HashSet<String>,
}

pub(in crate::store) fn apply_items(
    tx: &mut Tx<'_>,
    items: Vec<ApplyItem>,
    owner: &str,
    now: OffsetDateTime,
) -> Result<Outcome, StoreError> {
    let plans = {
        let mut planner = Planner {
            labels: tx.txn.open_table(LABELS)?,
            meta: tx.txn.open_table(META)?,
            names: tx.txn.open_table(APP_NAMES)?,
            apps: tx.txn.open_table(APPS)?,
            users: tx.txn.open_table(USERS)?,
            owner,
            now,
            labels_planned: HashMap::new(),
            names_planned: HashSet::new(),
        };
        match planner.plan_all(items)? {
            Ok(plans) => plans,
            Err(rejection) => return Ok(Err(rejection)),
        }
    };
    let mut results = Vec::with_capacity(plans.len());
    for plan in plans {
        results.push(match plan {
            Plan::Unchanged(r) => r,
            Plan::NewLabel { label, result } => {
                write_new_label(tx, label)?;
                result
            }
            Plan::NewApp { app, label, result } => {
                write_new_application(tx, app, &label)?;
                result
            }
            Plan::PutUser { record, result } => {
                write_user(tx, record, None, result.action == ApplyAction::Created)?;
                result
            }
        });
    }
    Ok(Ok(Response::Applied(results)))
}

impl Planner<'_> {
    /// Plans every item, labels first; the plans come back in the documents' order.
    fn plan_all(&mut self, items: Vec<ApplyItem>) -> Result<Result<Vec<Plan>, Rejection>, StoreError> {
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| !matches!(items[i], ApplyItem::Label { .. }));
        let mut slots: Vec<Option<ApplyItem>> = items.into_iter().map(Some).collect();
        let mut planned: Vec<Option<Plan>> = (0..slots.len()).map(|_| None).collect();
        for i in order {
            let Some(item) = slots[i].take() else { continue };
            let plan = match item {
                ApplyItem::Label { label, uid } => self.plan_label(label, uid)?,
                ApplyItem::Application { app, uid } => self.plan_application(app, uid)?,
                ApplyItem::User { record, uid } => self.plan_user(record, uid)?,
            };
            match plan {
                Ok(p) => planned[i] = Some(p),
                Err(rejection) => return Ok(Err(rejection)),
            }
        }
        Ok(Ok(planned.into_iter().flatten().collect()))
    }

    /// A label: unchanged when the spec matches the version it names (or the latest),
    /// else the next version number (never reused, even after deletions).
    fn plan_label(&mut self, label: Label, uid: Uuid) -> Result<Result<Plan, Rejection>, StoreError> {
        let name = label.metadata.name_str().to_owned();
        let latest = match self.labels_planned.get(&name) {
            Some(l) => Some(l.clone()),
            None => read_label(&self.labels, &name, None)?,
        };
        let max_used = self.meta.get(format!("label_max/{name}").as_str())?.map(|v| v.value()).unwrap_or(0) as u32;
        let max_used = max_used.max(latest.as_ref().and_then(|l| l.metadata.version).unwrap_or(0));
        let explicit = label.metadata.version;
        let existing_at = match explicit {
            Some(v) if self.labels_planned.get(&name).and_then(|l| l.metadata.version) == Some(v) => {
                self.labels_planned.get(&name).cloned()
            }
            Some(v) => read_label(&self.labels, &name, Some(v))?,
            None => latest.clone(),
        };
        let result =
            |version, action| ApplyResult { kind: "Label".into(), name: name.clone(), version: Some(version), action };
        Ok(match (explicit, existing_at) {
            (_, Some(cur)) if cur.spec == label.spec => {
                Ok(Plan::Unchanged(result(cur.metadata.version.unwrap_or(0), ApplyAction::Unchanged)))
            }
            (Some(v), Some(_)) => Err(Rejection::Conflict(format!(
                "label {name:?} version {v} exists with another spec; label versions are immutable (omit metadata.version to create version {})",
                max_used + 1
            ))),
            (Some(v), None) if v != max_used + 1 => Err(Rejection::Conflict(format!(
                "label {name:?} version {v} cannot be created: the next version is {}",
                max_used + 1
            ))),
            _ => {
                let version = max_used + 1;
                let mut new = label;
                new.status = None;
                new.metadata.uid = Some(uid);
                new.metadata.version = Some(version);
                new.metadata.created_at = Some(self.now);
                new.metadata.owner = Some(self.owner.to_owned());
                let action = if latest.is_some() { ApplyAction::Configured } else { ApplyAction::Created };
                self.labels_planned.insert(name.clone(), new.clone());
                Ok(Plan::NewLabel { label: new, result: result(version, action) })
            }
        })
    }

    /// An application: unchanged when its name exists with the same spec, a conflict
    /// with another spec, else new (NEW, its label version pinned, a name generated
    /// from the label when it has none).
    fn plan_application(&mut self, app: Application, uid: Uuid) -> Result<Result<Plan, Rejection>, StoreError> {
        let existing = match app.metadata.name.as_ref() {
            Some(n) => match self.names.get(n.as_str())? {
                Some(u) => read_app(&self.apps, u.value())?,
                None => None,
            },
            None => None,
        };
        if let Some(cur) = existing {
            let name = cur.metadata.name_str().to_owned();
            return Ok(if cur.spec == app.spec {
                Ok(Plan::Unchanged(ApplyResult {
                    kind: "Application".into(),
                    name,
                    version: None,
                    action: ApplyAction::Unchanged,
                }))
            } else {
                Err(Rejection::Conflict(format!(
                    "application {name:?} exists with another spec; applications are immutable (deallocate it and use a new name)"
                )))
            });
        }
        let label_name = app.spec.label.name.as_str();
        let label = match (self.labels_planned.get(label_name), app.spec.label.version) {
            (Some(l), None) => Some(l.clone()),
            (Some(l), Some(v)) if l.metadata.version == Some(v) => Some(l.clone()),
            _ => read_label(&self.labels, label_name, app.spec.label.version)?,
        };
        let Some(label) = label else {
            let msg = match app.spec.label.version {
                Some(v) => format!("label {label_name:?} has no version {v}"),
                None => format!("label {label_name:?} does not exist"),
            };
            return Ok(Err(invalid("Application", app.metadata.name_str(), "spec.label", msg)));
        };
        if let Some(rejection) = lifetime_beyond_label(&app, &label) {
            return Ok(Err(rejection));
        }
        let name = match &app.metadata.name {
            Some(n) => n.to_string(),
            None => generated_name(label_name, uid, |n| {
                self.names.get(n).map(|g| g.is_some()).unwrap_or(true) || self.names_planned.contains(n)
            }),
        };
        if !self.names_planned.insert(name.clone()) {
            return Ok(Err(Rejection::Conflict(format!("application {name:?} appears twice in this apply"))));
        }
        let mut new = app;
        new.metadata = ObjectMeta {
            name: name.parse().ok(),
            uid: Some(uid),
            created_at: Some(self.now),
            resource_version: None,
            owner: Some(self.owner.to_owned()),
            version: None,
        };
        new.status = ApplicationStatus {
            phase: Phase::New,
            label_version: label.metadata.version,
            message: "waiting for a node".into(),
            history: vec![HistoryEntry {
                phase: Phase::New,
                at: self.now,
                message: format!("created by {}", self.owner),
            }],
            ..Default::default()
        };
        let result = ApplyResult { kind: "Application".into(), name, version: None, action: ApplyAction::Created };
        Ok(Ok(Plan::NewApp { app: new, label, result }))
    }

    /// A user: created, or its roles, rate limit and (when given) password changed;
    /// its token is kept.
    fn plan_user(&mut self, mut record: UserRecord, uid: Uuid) -> Result<Result<Plan, Rejection>, StoreError> {
        let name = record.user.metadata.name_str().to_owned();
        let result = |action| ApplyResult { kind: "User".into(), name: name.clone(), version: None, action };
        let Some(cur) = read_user(&self.users, &name)? else {
            record.user.metadata = ObjectMeta {
                name: record.user.metadata.name.clone(),
                uid: Some(uid),
                created_at: Some(self.now),
                ..Default::default()
            };
            return Ok(Ok(Plan::PutUser { record, result: result(ApplyAction::Created) }));
        };
        let same = cur.user.spec.roles == record.user.spec.roles
            && cur.user.spec.rate_limit == record.user.spec.rate_limit
            && record.password_hash.is_none();
        if same {
            return Ok(Ok(Plan::Unchanged(result(ApplyAction::Unchanged))));
        }
        let mut updated = cur;
        updated.user.spec.roles = record.user.spec.roles;
        updated.user.spec.rate_limit = record.user.spec.rate_limit;
        if record.password_hash.is_some() {
            updated.password_hash = record.password_hash;
        }
        Ok(Ok(Plan::PutUser { record: updated, result: result(ApplyAction::Configured) }))
    }
}

fn write_new_label(tx: &mut Tx<'_>, mut label: Label) -> Result<(), StoreError> {
    let rev = tx.bump();
    label.metadata.resource_version = Some(rev.to_string());
    let name = label.metadata.name_str().to_owned();
    let version = label.metadata.version.unwrap_or(0);
    tx.txn.open_table(LABELS)?.insert((name.as_str(), version), serde_json::to_vec(&label)?.as_slice())?;
    tx.txn.open_table(META)?.insert(format!("label_max/{name}").as_str(), u64::from(version))?;
    tx.emit(Kind::Label, WatchEventType::Added, serde_json::to_value(&label)?, None);
    Ok(())
}

fn write_new_application(tx: &mut Tx<'_>, mut app: Application, label: &Label) -> Result<(), StoreError> {
    let rev = tx.bump();
    app.metadata.resource_version = Some(rev.to_string());
    let uid = app.metadata.uid.map(|u| u.as_u128()).unwrap_or_default();
    let owner = app.metadata.owner.clone().unwrap_or_default();
    let stored = serde_json::to_vec(&app)?;
    tx.txn.open_table(APPS)?.insert(uid, stored.as_slice())?;
    tx.txn.open_table(APP_LABELS)?.insert(uid, serde_json::to_vec(label)?.as_slice())?;
    tx.txn.open_table(APP_NAMES)?.insert(app.metadata.name_str(), uid)?;
    tx.txn.open_table(APP_BY_PHASE)?.insert((phase_code(Phase::New), uid), ())?;
    tx.txn.open_table(APP_BY_LABEL)?.insert((app.spec.label.name.as_str(), uid), ())?;
    tx.txn.open_table(APP_BY_OWNER)?.insert((owner.as_str(), uid), ())?;
    super::super::derived::created(tx.txn, &app)?;
    tx.emit_application(WatchEventType::Added, &app, stored);
    Ok(())
}

/// Refuses an application lifetime longer than every definition of its label allows
/// (when each sets one): it would be capped silently otherwise.
fn lifetime_beyond_label(app: &Application, label: &Label) -> Option<Rejection> {
    let asked = app.spec.lifetime?.get();
    let longest = label
        .spec
        .definitions
        .iter()
        .map(|d| d.resources.lifetime.map(|l| l.get()))
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()?;
    (asked > longest).then(|| {
        invalid(
            "Application",
            app.metadata.name_str(),
            "spec.lifetime",
            format!(
                "lifetime {} is longer than label {:?}'s lifetime {}",
                humantime::format_duration(asked),
                app.spec.label.name.as_str(),
                humantime::format_duration(longest)
            ),
        )
    })
}

/// `<label>-<8 hex of the uid's random tail>`, or the whole uid if that is taken.
fn generated_name(label: &str, uid: Uuid, taken: impl Fn(&str) -> bool) -> String {
    let hex = uid.simple().to_string();
    let short = format!("{}-{}", &label[..label.len().min(50)], &hex[hex.len() - 8..]);
    if taken(&short) { hex } else { short }
}

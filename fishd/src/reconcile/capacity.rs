//! Capacity arithmetic: what a node (and each driver instance) has, what its
//! applications reserve, and whether one more definition fits. Pure functions, so
//! the election's decisions are easy to test and the same on every node.

use std::collections::BTreeMap;

use api_types::{Definition, NodeCapacity, Resources};

/// Reserved resources, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu: u32,
    pub ram: u32,
    pub slots: u32,
    pub applications: u32,
}

impl Usage {
    /// Adds what `r` reserves.
    pub fn add(&mut self, r: &Resources) {
        self.cpu = self.cpu.saturating_add(r.cpu);
        self.ram = self.ram.saturating_add(r.ram);
        self.slots = self.slots.saturating_add(r.slots());
        self.applications += 1;
    }

    /// As the Node's `allocated` field.
    pub fn as_capacity(&self) -> NodeCapacity {
        NodeCapacity { cpu: self.cpu, ram: self.ram, slots: self.slots, applications: self.applications }
    }
}

/// What is reserved on the node and per driver instance.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub node: Usage,
    pub drivers: BTreeMap<String, Usage>,
}

impl Ledger {
    /// Reserves `def` on the node and on its driver instance.
    pub fn reserve(&mut self, def: &Definition) {
        self.node.add(&def.resources);
        self.drivers.entry(def.driver.clone()).or_default().add(&def.resources);
    }
}

/// Why a definition does not fit now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortage {
    /// It would fit once other applications end.
    Busy(String),
    /// It can never fit: it asks for more than the total.
    Never(String),
}

impl Shortage {
    pub fn message(&self) -> &str {
        match self {
            Shortage::Busy(m) | Shortage::Never(m) => m,
        }
    }
}

/// Whether `r` fits in `total` given `used`. Overbooking lets cpu or ram go past the
/// total, but never a single request larger than the whole.
pub fn fits(r: &Resources, total: &NodeCapacity, used: &Usage, scope: &str) -> Result<(), Shortage> {
    let check = |what: &str, want: u32, have: u32, used: u32, overbook: bool| -> Result<(), Shortage> {
        if want > have {
            return Err(Shortage::Never(format!("{scope} has {have} {what} in total, the definition asks for {want}")));
        }
        if !overbook && used.saturating_add(want) > have {
            return Err(Shortage::Busy(format!(
                "not enough {what} on {scope}: {} of {have} free, {want} needed",
                have.saturating_sub(used)
            )));
        }
        Ok(())
    };
    check("cpu", r.cpu, total.cpu, used.cpu, r.cpu_overbook)?;
    check("ram (GiB)", r.ram, total.ram, used.ram, r.ram_overbook)?;
    check("slots", r.slots(), total.slots, used.slots, false)?;
    Ok(())
}

/// Whether every `nodeFilter` glob matches the node name or one of its identifiers.
pub fn filter_matches(filters: &[String], node_name: &str, identifiers: &[String]) -> Result<(), String> {
    for f in filters {
        let Ok(pattern) = glob::Pattern::new(f) else {
            return Err(format!("nodeFilter {f:?} is not a valid glob"));
        };
        let hit = pattern.matches(node_name) || identifiers.iter().any(|i| pattern.matches(i));
        if !hit {
            return Err(format!("nodeFilter {f:?} matches neither the node name nor its identifiers"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu: u32, ram: u32) -> Resources {
        Resources { cpu, ram, ..Default::default() }
    }

    const TOTAL: NodeCapacity = NodeCapacity { cpu: 4, ram: 8, slots: 2, applications: 0 };

    #[test]
    fn busy_and_never_are_told_apart() {
        let mut used = Usage::default();
        assert!(fits(&res(2, 4), &TOTAL, &used, "node").is_ok());
        used.add(&res(2, 4));
        used.add(&res(2, 4));
        assert!(matches!(fits(&res(1, 1), &TOTAL, &used, "node"), Err(Shortage::Busy(_))));
        assert!(matches!(fits(&res(5, 1), &TOTAL, &Usage::default(), "node"), Err(Shortage::Never(_))));
    }

    #[test]
    fn overbooking_allows_more_than_free_but_not_more_than_total() {
        let mut used = Usage::default();
        used.add(&res(4, 1));
        let mut r = res(2, 1);
        r.cpu_overbook = true;
        assert!(fits(&r, &TOTAL, &used, "node").is_ok());
        r.cpu = 5;
        assert!(matches!(fits(&r, &TOTAL, &used, "node"), Err(Shortage::Never(_))));
    }

    #[test]
    fn slots_limit_applications() {
        let mut used = Usage::default();
        used.add(&res(0, 0));
        used.add(&res(0, 0));
        assert!(matches!(fits(&res(0, 0), &TOTAL, &used, "node"), Err(Shortage::Busy(m)) if m.contains("slots")));
    }

    #[test]
    fn node_filter_globs() {
        let ids = vec!["linux".to_string(), "x86_64".to_string()];
        assert!(filter_matches(&["linux-*".into()], "linux-a", &ids).is_ok());
        assert!(filter_matches(&["x86*".into(), "lin*".into()], "host", &ids).is_ok());
        assert!(filter_matches(&["darwin".into()], "host", &ids).is_err());
    }
}

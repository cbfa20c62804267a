//! The regression gate: a quick run's ratios next to the committed run's
//! (`bench/results/latest.json`). Every ratio is a figure over its reference measured
//! side by side in the same run, so it holds on a busy machine where absolute figures
//! do not; each is oriented so that higher is better. A gated ratio that dropped by
//! more than [`MAX_DROP`] fails the check. So does a check that proves nothing: one
//! where no gated ratio could be compared (a committed run without `ratios`, or with
//! other names), or where a gated figure of the committed run has no value now (renamed
//! or no longer measured). Not part of CI: run it before merging a
//! change that may cost performance (`./scripts/bench.sh --check`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use crate::report::{GateRatio, figure};

/// The largest drop of a gated ratio that still passes.
pub const MAX_DROP: f64 = 0.25;

/// The ratios of a results file (`latest.json`, `check.json`).
pub fn ratios_of(path: &Path) -> Result<Vec<GateRatio>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["ratios"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(GateRatio {
                figure: r["figure"].as_str()?.to_owned(),
                value: r["value"].as_f64()?,
                gated: r["gated"].as_bool().unwrap_or(true),
            })
        })
        .collect())
}

/// The gate's table and what it found.
#[derive(Debug)]
struct Judgement {
    /// figure / committed / now / change / verdict, a header first.
    rows: Vec<[String; 5]>,
    /// Gated ratios that dropped by more than [`MAX_DROP`].
    dropped: Vec<String>,
    /// Gated ratios compared with a committed value.
    compared: usize,
    /// Gated figures of the committed run that have no value now.
    missing: Vec<String>,
}

impl Judgement {
    /// Whether the gate passes: something gated was compared, nothing gated is
    /// missing, and nothing dropped. A gate that compared nothing proves nothing.
    fn passed(&self) -> bool {
        self.dropped.is_empty() && self.missing.is_empty() && self.compared > 0
    }

    /// One line per reason the gate fails.
    fn failures(&self, committed: &Path) -> Vec<String> {
        let mut out: Vec<String> =
            self.dropped.iter().map(|f| format!("{f:?} dropped by more than {:.0}%", MAX_DROP * 100.0)).collect();
        out.extend(self.missing.iter().map(|f| {
            format!("{f:?} is gated in {} but has no value now (renamed, or no longer measured?)", committed.display())
        }));
        if self.compared == 0 {
            out.push(format!(
                "no gated ratio could be compared: {} has none of this run's (commit a latest.json from a full run)",
                committed.display()
            ));
        }
        out
    }
}

/// Compares `now` with the `old` (committed) ratios.
fn judge(old: &[GateRatio], now: &[GateRatio]) -> Judgement {
    let values: BTreeMap<&str, f64> = old.iter().map(|r| (r.figure.as_str(), r.value)).collect();
    let mut j = Judgement {
        rows: vec![["figure".to_owned(), "committed".into(), "now".into(), "change".into(), "verdict".into()]],
        dropped: Vec::new(),
        compared: 0,
        missing: Vec::new(),
    };
    for r in now {
        let (committed, change, verdict) = match values.get(r.figure.as_str()) {
            Some(&c) if c > 0.0 => {
                let change = r.value / c - 1.0;
                let verdict = if !r.gated {
                    "(not gated)"
                } else if change < -MAX_DROP || !change.is_finite() {
                    j.compared += 1;
                    j.dropped.push(r.figure.clone());
                    "DROPPED"
                } else {
                    j.compared += 1;
                    "ok"
                };
                (figure(c), format!("{:+.1}%", change * 100.0), verdict)
            }
            _ => ("—".to_owned(), "—".to_owned(), "(not in the committed run)"),
        };
        j.rows.push([r.figure.clone(), committed, figure(r.value), change, verdict.into()]);
    }
    for r in old.iter().filter(|r| r.gated && !now.iter().any(|n| n.figure == r.figure)) {
        j.missing.push(r.figure.clone());
        j.rows.push([r.figure.clone(), figure(r.value), "—".into(), "—".into(), "MISSING".into()]);
    }
    j
}

/// Prints figure / committed / now / change for every ratio of `now` (and every gated
/// committed one missing now) and answers whether the gate passes: at least one gated
/// ratio was compared, every gated committed ratio has a value now, and none of them
/// dropped by more than [`MAX_DROP`].
pub fn compare(committed: &Path, now: &[GateRatio]) -> Result<bool> {
    let j = judge(&ratios_of(committed)?, now);
    let rows = &j.rows;
    let widths: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    println!();
    for (n, r) in rows.iter().enumerate() {
        let cells: Vec<String> =
            r.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        println!("| {} |", cells.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", rule.join("-|-"));
        }
    }
    let ok = j.passed();
    println!(
        "\n{} (a gated ratio fails when it drops by more than {:.0}% from {}; the run: check.json / check.md)",
        if ok { "PASS" } else { "FAIL" },
        MAX_DROP * 100.0,
        committed.display()
    );
    for f in j.failures(committed) {
        println!("FAIL: {f}");
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(figure: &str, value: f64, gated: bool) -> GateRatio {
        GateRatio { figure: figure.into(), value, gated }
    }

    #[test]
    fn a_gate_that_compared_something_and_lost_nothing_passes() {
        let old = [r("a", 1.0, true), r("b", 2.0, false)];
        let j = judge(&old, &[r("a", 0.8, true), r("b", 0.1, false), r("new", 1.0, true)]);
        assert!(j.passed(), "{j:?}");
        assert_eq!(j.compared, 1);
    }

    #[test]
    fn a_gated_drop_fails() {
        let j = judge(&[r("a", 1.0, true)], &[r("a", 0.7, true)]);
        assert!(!j.passed());
        assert_eq!(j.dropped, ["a"]);
    }

    #[test]
    fn a_gate_that_compared_nothing_fails() {
        // The committed run has no ratios (an older latest.json), or other names.
        for old in [vec![], vec![r("renamed", 1.0, true)], vec![r("a", 0.0, true)]] {
            let j = judge(&old, &[r("a", 1.0, true)]);
            assert!(!j.passed(), "{old:?}: {j:?}");
            assert_eq!(j.compared, 0);
            let why = j.failures(Path::new("latest.json"));
            assert!(why.iter().any(|w| w.starts_with("no gated ratio could be compared")), "{why:?}");
        }
        // Only ungated ratios now.
        assert!(!judge(&[r("a", 1.0, true)], &[r("a", 1.0, false)]).passed());
    }

    #[test]
    fn a_gated_committed_figure_with_no_value_now_fails() {
        let old = [r("a", 1.0, true), r("gone", 1.0, true), r("shown only", 1.0, false)];
        let j = judge(&old, &[r("a", 1.0, true)]);
        assert!(!j.passed());
        assert_eq!(j.missing, ["gone"]);
        assert!(j.rows.iter().any(|row| row[0] == "gone" && row[4] == "MISSING"));
        let why = j.failures(Path::new("latest.json"));
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("\"gone\" is gated in latest.json but has no value now"), "{why:?}");
    }

    #[test]
    fn the_committed_results_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latest.json");
        std::fs::write(&path, r#"{"ratios":[{"figure":"a","value":1.5,"gated":true},{"figure":"b","value":2}]}"#)
            .unwrap();
        let old = ratios_of(&path).unwrap();
        assert_eq!(old.len(), 2);
        assert!(old[1].gated, "gated unless it says not");
        assert!(compare(&path, &[r("a", 1.5, true), r("b", 2.0, true)]).unwrap());
        assert!(!compare(&path, &[r("a", 1.5, true)]).unwrap());
    }
}

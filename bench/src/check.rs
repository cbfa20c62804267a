//! The regression gate: a quick run's ratios next to the committed run's
//! (`bench/results/latest.json`). Every ratio is a figure over its reference measured
//! side by side in the same run, so it holds on a busy machine where absolute figures
//! do not; each is oriented so that higher is better. A gated ratio that dropped by
//! more than [`MAX_DROP`] fails the check. Not part of CI: run it before merging a
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

/// Prints figure / committed / now / change for every ratio of `now` and answers
/// whether none of the gated ones dropped by more than [`MAX_DROP`].
pub fn compare(committed: &Path, now: &[GateRatio]) -> Result<bool> {
    let old: BTreeMap<String, f64> = ratios_of(committed)?.into_iter().map(|r| (r.figure, r.value)).collect();
    let mut ok = true;
    let mut rows = vec![["figure".to_owned(), "committed".into(), "now".into(), "change".into(), "verdict".into()]];
    for r in now {
        let (committed, change, verdict) = match old.get(&r.figure) {
            Some(&c) if c > 0.0 => {
                let change = r.value / c - 1.0;
                let verdict = if !r.gated {
                    "(not gated)"
                } else if change < -MAX_DROP {
                    ok = false;
                    "DROPPED"
                } else {
                    "ok"
                };
                (figure(c), format!("{:+.1}%", change * 100.0), verdict)
            }
            _ => ("—".to_owned(), "—".to_owned(), "(not in the committed run)"),
        };
        rows.push([r.figure.clone(), committed, figure(r.value), change, verdict.into()]);
    }
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
    println!(
        "\n{} (a gated ratio fails when it drops by more than {:.0}% from {}; the run: check.json / check.md)",
        if ok { "PASS" } else { "FAIL" },
        MAX_DROP * 100.0,
        committed.display()
    );
    Ok(ok)
}

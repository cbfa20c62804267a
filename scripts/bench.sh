#!/usr/bin/env bash
# Runs the benchmark suite: builds fishd and fish-bench in release, then starts
# real fishd processes and writes bench/results/latest.json and latest.md.
# Never run by CI. Arguments go to fish-bench (try --help, --quick
# for a smoke run that writes quick.* instead, --check for the regression gate).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins -p fishd -p fishctl -p fish-bench
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/fish-bench" "$@"

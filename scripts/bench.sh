#!/usr/bin/env bash
# Runs the benchmark suite: builds fishd and fish-bench in release, then starts
# real fishd processes and writes bench/results/latest.json and latest.md.
# Not part of CI's test run. Arguments go to fish-bench (try --help, or --quick
# for a one-minute smoke run that writes quick.* instead).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins -p fishd -p fishctl -p fish-bench
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/fish-bench" "$@"

#!/usr/bin/env bash
# The benchmark regression gate: builds fishd and fish-bench in release, runs a quick
# main part (about 4 minutes once built) and compares its ratios with the committed
# bench/results/latest.json; exits 1 when a ratio dropped by more than 25 %.
# Run it on a quiet machine before merging a performance-sensitive change. Not in CI.
set -euo pipefail
exec "$(dirname "$0")/bench.sh" --check "$@"

#!/bin/bash
# Alternated A/B runs of the cluster benchmark (issue 12): N pairs, A then B, each run
# under one CPU lock so nothing else of ours runs meanwhile.
#   usage: ab.sh OUT N TAG_A FISHD_A TAG_B FISHD_B
#   env:   FISH_BENCH (default target/release/fish-bench), LOCK (default /tmp/aquarium-cpu.lock)
# Runs land in OUT/<tag>-<i>/cluster.{json,md}; summarize with sum.py OUT.
set -euo pipefail
OUT=$1 N=$2 TA=$3 BA=$4 TB=$5 BB=$6
BENCH=${FISH_BENCH:-target/release/fish-bench}
LOCK=${LOCK:-/tmp/aquarium-cpu.lock}
mkdir -p "$OUT"
for i in $(seq 1 "$N"); do
  for pair in "$TA $BA" "$TB $BB"; do
    set -- $pair
    flock "$LOCK" -c "sync; sleep 1; $BENCH --only cluster --fishd $2 --out $OUT/$1-$i" > "$OUT/$1-$i.log" 2>&1 || true
  done
done

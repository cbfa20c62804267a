#!/bin/bash
# Syscall counts of all fishd processes over 2.5 s of the cluster burst (issue 12): how many
# socket writes/reads, page writes and fsyncs the three nodes make.
#   usage: sysc.sh OUT FISHD    (needs linux-perf; env FISH_BENCH, LOCK as ab.sh)
set -euo pipefail
OUT=$1 BIN=$2
BENCH=${FISH_BENCH:-target/release/fish-bench}
LOCK=${LOCK:-/tmp/aquarium-cpu.lock}
mkdir -p "$OUT"
name=$(basename "$BIN")
events=syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom
events=$events,syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64,context-switches
flock "$LOCK" bash -c "
$BENCH --only cluster --fishd $BIN --out $OUT/run > $OUT/bench.log 2>&1 &
B=\$!
until grep -q 'cluster singles and burst' $OUT/bench.log; do sleep 0.05; done
sleep 2.2
perf stat -e $events -p \$(pgrep -x $name | paste -sd,) -o $OUT/stat.txt -- sleep 2.5
wait \$B
"
cat "$OUT/stat.txt"

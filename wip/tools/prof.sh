#!/bin/bash
# perf profile (or syscall counts) of the cluster benchmark's busiest phase (issue 12), all
# fishd processes.
#   usage: prof.sh OUT FISHD [cluster|single] [record|syscalls]
#   cluster: 2.5 s from 2.2 s after "cluster singles and burst" (the three nodes' bursts);
#   single:  2.0 s from 1.6 s after "cluster part: single node" (the single node's bursts).
#   record (default): a dwarf profile; then cats.py OUT/perf.txt <core-ms/app> [...] compares
#   categories per application. syscalls: counts of socket writes/reads, page writes, fsyncs
#   and context switches (perf stat) in OUT/stat.txt.
set -euo pipefail
OUT=$1 BIN=$2 PHASE=${3:-cluster} MODE=${4:-record}
BENCH=${FISH_BENCH:-target/release/fish-bench}
LOCK=${LOCK:-/tmp/aquarium-cpu.lock}
case $PHASE in
  cluster) MARK='cluster singles and burst' WAIT=2.2 LEN=2.5 ;;
  single) MARK='cluster part: single node' WAIT=1.6 LEN=2.0 ;;
  *) echo "phase: cluster or single" >&2; exit 2 ;;
esac
case $MODE in
  record) PERF="perf record -F 999 -g --call-graph dwarf,16384 -o $OUT/perf.data" ;;
  syscalls)
    events=syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom
    PERF="perf stat -o $OUT/stat.txt -e $events,syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64,context-switches" ;;
  *) echo "mode: record or syscalls" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
name=$(basename "$BIN")
flock "$LOCK" bash -c "
$BENCH --only cluster --fishd $BIN --out $OUT/run > $OUT/bench.log 2>&1 &
B=\$!
until grep -q '$MARK' $OUT/bench.log; do sleep 0.05; done
sleep $WAIT
$PERF -p \$(pgrep -x $name | paste -sd,) -- sleep $LEN > $OUT/perf.log 2>&1
wait \$B
"
if [ "$MODE" = syscalls ]; then
  cat "$OUT/stat.txt"
else
  perf script -i "$OUT/perf.data" --no-inline > "$OUT/perf.txt" 2>/dev/null
fi

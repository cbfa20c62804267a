#!/usr/bin/env bash
# The README's quickstart.
#
#   bash scripts/quickstart.sh        build fishd and fishctl, start a node on embedded
#                                     defaults (or reuse the one running), apply
#                                     manifests/quickstart/, wait until ALLOCATED, list it
#   bash scripts/quickstart.sh stop   deallocate everything the node runs, stop it, and
#                                     check that nothing it started is left
#
# Re-runnable any number of times: an application of manifests/quickstart/ that has
# finished (DEALLOCATED, ERROR) is removed before the manifests are applied again.
#
# Variables:
#   FISH_DATA         data directory (default ./fish-data, relative to where you run this)
#   FISH_API          API address (default 127.0.0.1:8001); change it when the port is busy
#   CARGO_TARGET_DIR  where cargo builds (default target/ of the repository)
#   FISH_BUILD=0      use the fishd and fishctl already built there (the end-to-end test
#                     does: the test command built them, and a build of only these two
#                     resolves dependency features differently and would relink them)
set -euo pipefail

DATA=${FISH_DATA:-./fish-data}
case "$DATA" in /*) ;; *) DATA="$PWD/$DATA" ;; esac
API=${FISH_API:-127.0.0.1:8001}
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
FISHD=$TARGET/debug/fishd
FISHCTL=$TARGET/debug/fishctl
CONFIG="$DATA/fishctl.yaml"
PIDFILE="$DATA/fishd.pid"
# The applications of manifests/quickstart/ (removed when finished, so a re-run works).
APPS=(quickstart-1)

running_pid() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then cat "$PIDFILE"; fi
}

stop() {
  local pid
  pid=$(running_pid)
  if [ -z "$pid" ]; then
    echo "==> fishd is not running (data: $DATA)"
    rm -f "$PIDFILE"
    return 0
  fi
  # fishd was started with --drain-and-deallocate: SIGTERM releases every resource
  # (processes, containers) before it exits, within its grace period.
  echo "==> stopping fishd (pid $pid): deallocating everything it runs"
  kill -TERM "$pid"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "fishd (pid $pid) did not exit within 30 s; see $DATA/fishd.log" >&2
    exit 1
  fi
  rm -f "$PIDFILE"
  # fishd's last words say whether anything was left running (and will be adopted).
  grep -E "left running|nothing left running" "$DATA/fishd.log" | tail -n 1 || true
  echo "==> stopped"
}

if [ "${1:-}" = "stop" ]; then
  stop
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: bash scripts/quickstart.sh [stop]" >&2
  exit 2
fi

# Only the two binaries: the test and benchmark crates' dependencies are not built.
# The dev profile (dependencies optimised, see Cargo.toml) takes a third of a release
# build's time. cargo shows its progress (crates built / total) as it goes.
if [ "${FISH_BUILD:-1}" != 0 ]; then
  echo "==> building fishd and fishctl (the first build takes a few minutes)"
  cargo build -p fishd -p fishctl --bins
fi
for b in "$FISHD" "$FISHCTL"; do
  [ -x "$b" ] || { echo "$b is missing: build it (cargo build -p fishd -p fishctl --bins)" >&2; exit 1; }
done

pid=$(running_pid)
if [ -n "$pid" ]; then
  echo "==> fishd already running (pid $pid)"
else
  mkdir -p "$DATA"
  echo "==> starting fishd on $API (data: $DATA, log: $DATA/fishd.log)"
  # Colour codes only on a terminal: the log is a file.
  nohup "$FISHD" --data-dir "$DATA" --api "$API" --drain-and-deallocate >"$DATA/fishd.log" 2>&1 &
  echo $! >"$PIDFILE"
fi

ready=0
for _ in $(seq 1 150); do
  if [ -f "$CONFIG" ] && "$FISHCTL" --config "$CONFIG" get nodes >/dev/null 2>&1; then
    ready=1
    break
  fi
  if [ -z "$(running_pid)" ]; then
    echo "fishd exited:" >&2
    cat "$DATA/fishd.log" >&2
    rm -f "$PIDFILE"
    exit 1
  fi
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  echo "fishd did not answer within 30 s; see $DATA/fishd.log" >&2
  exit 1
fi

for phase in DEALLOCATED ERROR; do
  for name in $("$FISHCTL" --config "$CONFIG" get applications --phase "$phase" -o name); do
    for app in "${APPS[@]}"; do
      if [ "${name#*/}" = "$app" ]; then
        echo "==> removing the finished $name of an earlier run"
        "$FISHCTL" --config "$CONFIG" delete application "$app"
      fi
    done
  done
done

echo "==> the node"
"$FISHCTL" --config "$CONFIG" get nodes
echo "==> applying manifests/quickstart/"
"$FISHCTL" --config "$CONFIG" apply -f manifests/quickstart/ --wait --timeout 60s
echo "==> applications"
"$FISHCTL" --config "$CONFIG" get applications
cat <<MSG

fishd is running (pid $(cat "$PIDFILE")). Try:
  $FISHCTL --config $CONFIG describe application quickstart-1
  $FISHCTL --config $CONFIG logs quickstart-1
  $FISHCTL --config $CONFIG deallocate application quickstart-1 --wait
Stop it (deallocates everything it runs): bash scripts/quickstart.sh stop
MSG

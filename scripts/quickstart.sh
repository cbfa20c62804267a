#!/usr/bin/env bash
# Builds Aquarium, starts a node on embedded defaults (data in ./fish-data, API on
# 127.0.0.1:8001, the process driver), applies manifests/quickstart/, waits for the
# application to be ALLOCATED and lists it. The node keeps running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${FISH_DATA:-./fish-data}
API=${FISH_API:-127.0.0.1:8001}

# The dev profile (dependencies optimised, see Cargo.toml): a third of a release
# build's time, and the same artifacts the test command uses.
echo "==> building"
cargo build --bins
TARGET=${CARGO_TARGET_DIR:-target}
FISHD=$TARGET/debug/fishd
FISHCTL=$TARGET/debug/fishctl

if [ -f "$DATA/fishd.pid" ] && kill -0 "$(cat "$DATA/fishd.pid")" 2>/dev/null; then
  echo "==> fishd already running (pid $(cat "$DATA/fishd.pid"))"
else
  mkdir -p "$DATA"
  echo "==> starting fishd (log: $DATA/fishd.log)"
  nohup "$FISHD" --data-dir "$DATA" --api "$API" >"$DATA/fishd.log" 2>&1 &
  echo $! >"$DATA/fishd.pid"
fi
CONFIG="$DATA/fishctl.yaml"

for _ in $(seq 1 100); do
  if [ -f "$CONFIG" ] && "$FISHCTL" --config "$CONFIG" get nodes >/dev/null 2>&1; then break; fi
  if ! kill -0 "$(cat "$DATA/fishd.pid")" 2>/dev/null; then echo "fishd exited:"; cat "$DATA/fishd.log"; exit 1; fi
  sleep 0.2
done

echo "==> the node"
"$FISHCTL" --config "$CONFIG" get nodes
echo "==> applying manifests/quickstart/"
"$FISHCTL" --config "$CONFIG" apply -f manifests/quickstart/ --wait --timeout 60s
echo "==> applications"
"$FISHCTL" --config "$CONFIG" get applications
cat <<MSG

fishd is running (pid $(cat "$DATA/fishd.pid")). Try:
  $FISHCTL --config $CONFIG describe application quickstart-1
  $FISHCTL --config $CONFIG logs application quickstart-1
  $FISHCTL --config $CONFIG deallocate application quickstart-1 --wait
Stop it with: kill \$(cat $DATA/fishd.pid)
MSG

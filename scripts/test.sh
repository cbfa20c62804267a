#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the driver tests against the real
# Docker Engine, and the end-to-end tests that start real fishd processes.
# The same command CI runs (.ci/run) and the README shows.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

# The docker tests need a local image (no registry is reachable): built from Debian's
# busybox-static. Skipped (and the docker tests skip themselves) when no engine runs.
if docker info >/dev/null 2>&1; then
  bash .ci/docker-test-image.sh
elif [ "${CI:-}" = true ] && [[ ",${AQUARIUM_SKIP:-}," != *",docker,"* ]]; then
  echo "error: no Docker engine answers, and CI=true: the docker tests cannot run (AQUARIUM_SKIP=docker opts out)" >&2
  exit 1
else
  echo "note: no Docker engine answers; docker driver tests will be skipped (they fail under CI=true)" >&2
fi

# The end-to-end tests run the fishd and fishctl binaries: build them first, in the
# same profile the tests use, so one build serves every test binary.
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

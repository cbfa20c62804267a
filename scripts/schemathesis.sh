#!/usr/bin/env bash
# API conformance: runs schemathesis against a real fishd's own OpenAPI document, with
# the admin token, and fails on any 5xx or any response that violates the document.
# Not part of CI (it needs schemathesis from PyPI and takes minutes).
#
#   scripts/schemathesis.sh [extra schemathesis args...]
#
# Env: SCHEMATHESIS (default: schemathesis on PATH, else /work/venv-st/bin/schemathesis),
#      FISHD (default: target/debug/fishd, built if missing), MAX_EXAMPLES (default 50).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
fishd=${FISHD:-$target/debug/fishd}
st=${SCHEMATHESIS:-$(command -v schemathesis || echo /work/venv-st/bin/schemathesis)}
max_examples=${MAX_EXAMPLES:-50}

if [[ ! -x $fishd ]]; then
    (cd "$root" && cargo build -p fishd --bin fishd)
fi

work=$(mktemp -d /tmp/fishd-schemathesis.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/fish.yml" <<EOF
nodeName: schemathesis
dataDir: $work/data
api: 127.0.0.1:$port
capacity: {cpu: 64, ram: 256, slots: 256}
# Schemathesis sends thousands of requests; the admin is never rate limited, and
# this keeps any user it creates from turning into a wall of 429s.
rateLimit: 0
# Schemathesis sends bad credentials on purpose: let each get its 401, not the
# 429 a guessing address earns (that limit has its own e2e test).
authFailureLimit: 0
drivers:
  test: {}
EOF

"$fishd" --config "$work/fish.yml" >"$work/fishd.log" 2>&1 &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [[ ${KEEP:-0} != 1 ]]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

for _ in $(seq 300); do
    [[ -s $work/data/fishctl.yaml ]] && curl -sf --cacert "$work/data/ca.crt" "https://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.1
done
bootstrap=$(sed -n 's/^ *token: *//p' "$work/data/fishctl.yaml" | head -1)
[[ -n $bootstrap ]] || { echo "no admin token in $work/data/fishctl.yaml" >&2; cat "$work/fishd.log" >&2; exit 1; }
# Schemathesis may rotate the token of, or delete, any user it can name ("admin"
# included): it runs as an admin of its own, whose name it has no way to guess.
token=$(curl -sf --cacert "$work/data/ca.crt" -H "Authorization: Bearer $bootstrap" \
    -H 'Content-Type: application/json' \
    -d '{"kind":"User","metadata":{"name":"conformance-x7q2"},"spec":{"roles":["admin"]}}' \
    "https://127.0.0.1:$port/api/v1/users" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["token"])')

# A watch (`watch=true`) or a followed log (`follow=true`) is a stream that lasts
# until the client leaves: a request/response checker can only time out on it. They
# are covered by the e2e tests; here they are pinned off.
cat >"$work/schemathesis.toml" <<EOF
[parameters]
"query.watch" = "false"
"query.follow" = "false"
EOF

set +e
# From the temp dir: schemathesis writes its caches (.schemathesis/) where it runs.
cd "$work"
"$st" --config-file "$work/schemathesis.toml" run "https://127.0.0.1:$port/api/v1/openapi.json" \
    --tls-verify "$work/data/ca.crt" \
    -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$max_examples" \
    --request-timeout 10 \
    --workers 2 \
    "$@"
rc=$?
set -e
if grep -E ' ERROR |panicked' "$work/fishd.log" >/dev/null; then
    echo "--- fishd logged errors ---" >&2
    grep -E ' ERROR |panicked' "$work/fishd.log" | head -50 >&2
fi
exit $rc

#!/usr/bin/env bash
# API conformance: runs schemathesis against a real fishd's own OpenAPI document, as
# an admin of its own, and fails on any 5xx or any response that violates the
# document. Then prints, per operation, how many answers were 2xx (the bodies that
# were really checked), and fails if a create/get/list of labels, applications or
# users never succeeded (a run of 401s or 422s is not a pass).
# Not part of CI (it needs schemathesis from PyPI and takes minutes).
#
#   scripts/schemathesis.sh [extra schemathesis args...]
#
# Env: SCHEMATHESIS (default: schemathesis on PATH, else a venv in
#      ~/.cache/aquarium-schemathesis, created with pip on first use),
#      FISHD (default: target/debug/fishd, built if missing), MAX_EXAMPLES (default 50),
#      KEEP=1 keeps the work dir (fishd.log, counts.ndjson, openapi.json).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
fishd=${FISHD:-$target/debug/fishd}
max_examples=${MAX_EXAMPLES:-50}
# The version the hooks and the flags below were checked with.
st_version=4.32.5
venv=${XDG_CACHE_HOME:-$HOME/.cache}/aquarium-schemathesis
st=${SCHEMATHESIS:-$(command -v schemathesis || echo "$venv/bin/schemathesis")}
if [[ ! -x $st ]]; then
    echo "installing schemathesis $st_version into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==$st_version"
    st=$venv/bin/schemathesis
fi

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
api() { # METHOD PATH [JSON]: as the bootstrap admin; prints the body
    curl -sf --cacert "$work/data/ca.crt" -H "Authorization: Bearer $bootstrap" -H 'Content-Type: application/json' \
        -X "$1" ${3:+-d "$3"} "https://127.0.0.1:$port$2"
}
# Schemathesis runs as an admin of its own. The links let it find every user (the
# users list leads to their tokens and deletion), so the hooks send a rotation or
# deletion of this user or of `admin` for the decoy instead (self-lockout).
runner=conformance
decoy=lockout-decoy
token=$(api POST /api/v1/users "{\"kind\":\"User\",\"metadata\":{\"name\":\"$runner\"},\"spec\":{\"roles\":[\"admin\"]}}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["token"])')
api POST /api/v1/users "{\"kind\":\"User\",\"metadata\":{\"name\":\"$decoy\"},\"spec\":{\"roles\":[\"user\"]}}" >/dev/null
# The document's examples create applications of the label "example": make sure it
# exists whichever operation schemathesis tries first.
api GET /api/v1/openapi.json >"$work/openapi.json"
label_example=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d["paths"]["/api/v1/labels"]["post"]["requestBody"]["content"]["application/json"]["example"]))' "$work/openapi.json")
api POST /api/v1/labels "$label_example" >/dev/null

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
export PYTHONPATH=$root/scripts${PYTHONPATH:+:$PYTHONPATH} SCHEMATHESIS_HOOKS=schemathesis_hooks
export FISH_ST_RUNNER=$runner FISH_ST_DECOY=$decoy FISH_ST_COUNTS=$work/counts.ndjson
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
echo "--- answers per operation (2xx = success bodies checked against the document) ---"
# The operations that must have succeeded at least once for the run to mean anything.
export FISH_ST_REQUIRE_2XX="POST /api/v1/labels,GET /api/v1/labels/{name},POST /api/v1/applications,GET /api/v1/applications/{name},POST /api/v1/users,GET /api/v1/users/{name},GET /api/v1/labels,GET /api/v1/applications,GET /api/v1/users"
python3 "$root/scripts/schemathesis_report.py" "$work/counts.ndjson" "$work/openapi.json" || rc=1
if grep -E ' ERROR |panicked' "$work/fishd.log" >/dev/null; then
    echo "--- fishd logged errors ---" >&2
    grep -E ' ERROR |panicked' "$work/fishd.log" | head -50 >&2
fi
exit $rc

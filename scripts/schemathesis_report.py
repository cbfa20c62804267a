"""Per-operation summary of a schemathesis run (scripts/schemathesis.sh).

Reads the (operation, status) lines the hooks wrote and the OpenAPI document, and
prints for every documented operation how many answers were 2xx (bodies checked
against the document), 4xx and 5xx. Operations with no 2xx are listed at the end:
their success path was not checked. Exit status 1 if any operation in
FISH_ST_REQUIRE_2XX (comma-separated "METHOD /path") saw no 2xx.
"""

import collections
import json
import os
import sys

counts_file, openapi_file = sys.argv[1], sys.argv[2]
seen = collections.defaultdict(collections.Counter)
with open(counts_file, encoding="utf-8") as f:
    for line in f:
        r = json.loads(line)
        seen[r["operation"]][r["status"] // 100] += 1

with open(openapi_file, encoding="utf-8") as f:
    doc = json.load(f)
documented = [
    f"{method.upper()} {path}"
    for path, item in doc["paths"].items()
    for method in item
    if method in ("get", "put", "post", "delete", "patch")
]

print(f"{'operation':<52} {'calls':>6} {'2xx':>6} {'4xx':>6} {'5xx':>4}")
no_2xx = []
for op in sorted(documented):
    c = seen.get(op, collections.Counter())
    total = sum(c.values())
    print(f"{op:<52} {total:>6} {c[2]:>6} {c[4]:>6} {c[5]:>4}")
    if c[2] == 0:
        no_2xx.append(op)
total = sum(sum(c.values()) for c in seen.values())
ok = sum(c[2] for c in seen.values())
print(f"\n{len(documented)} operations, {total} answers, {ok} of them 2xx; "
      f"{len(documented) - len(no_2xx)} operations with at least one 2xx")
if no_2xx:
    print("no 2xx (success path unchecked): " + ", ".join(no_2xx))
required = set(filter(None, (os.environ.get("FISH_ST_REQUIRE_2XX") or "").split(",")))
missing = sorted(required & set(no_2xx))
if missing:
    print("required to see a 2xx but did not: " + ", ".join(missing), file=sys.stderr)
    sys.exit(1)

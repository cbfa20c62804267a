"""Schemathesis hooks for scripts/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

- Self-lockout: rotating the token of, or deleting, the user the run authenticates as
  (or the bootstrap `admin`) would turn every later request into a 401 and the run
  into a test of the 401 page. Such calls are sent for a decoy user instead, so the
  operations are still exercised, on someone else.
- Coverage: every answer is recorded (operation, status) in FISH_ST_COUNTS, so the
  script can say per operation how many 2xx answers had their bodies checked.
"""

import json
import os

import schemathesis

RUNNER = os.environ["FISH_ST_RUNNER"]
DECOY = os.environ["FISH_ST_DECOY"]
COUNTS = os.environ["FISH_ST_COUNTS"]
PROTECTED = {RUNNER, "admin"}
# (method, path) of the operations that can lock the runner out.
LOCKOUT = {("DELETE", "/api/v1/users/{name}"), ("POST", "/api/v1/users/{name}/token")}


@schemathesis.hook
def before_call(context, case, kwargs):
    op = case.operation
    params = case.path_parameters or {}
    if (op.method.upper(), op.path) in LOCKOUT and params.get("name") in PROTECTED:
        params["name"] = DECOY
        case.path_parameters = params


@schemathesis.hook
def after_call(context, case, response):
    op = case.operation
    with open(COUNTS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"operation": f"{op.method.upper()} {op.path}", "status": response.status_code}) + "\n")

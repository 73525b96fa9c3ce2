"""``batch``: up to 50 commands in one HTTP request.

Source: settings/how-to-call-rest-api/batch.md (b24restdocs). ``cmd`` maps keys to ``"method?query"``
strings (query URL-encoded PHP style); ``halt`` 1/true stops at the first failed command. Commands run in
order and may refer to earlier results with ``$result[key][field]...`` (also ``$result_total``,
``$result_next``, ``$result_error``, ``$result_time``); references are resolved in the decoded parameter
values. The answer is HTTP 200 with ``result``, ``result_error``, ``result_total``, ``result_next``,
``result_time``; an empty map is PHP's empty array ``[]`` and a map keyed 0..n-1 is a JSON array (PHP
json_encode). Commands beyond 50 each end with ``ERROR_BATCH_LENGTH_EXCEEDED`` ("subqueries beyond the
limit will end with an error"); a nested ``batch`` ends with ``ERROR_BATCH_METHOD_NOT_ALLOWED``.
Counting (settings/performance/limits.md): the batch is one request for the leaky bucket and is not itself
counted in ``operating``; each command is counted and checked against its own method.
UNCONFIRMED, chosen here: a reference to a missing path becomes an empty string; a value that is exactly
one reference takes the referenced value as is (array or scalar), a reference inside a longer string is
replaced by its string form.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .decode import Params, parse_php_query, php_truthy
from .errors import BATCH_LENGTH
from .registry import Call, Result, method

if TYPE_CHECKING:
    from .auth import Identity
    from .portal import Portal

MAX_COMMANDS = 50
_REF = re.compile(r"\$(result_error|result_total|result_next|result_time|result)((?:\[[^\[\]]*\])+)")
_KEY = re.compile(r"\[([^\[\]]*)\]")


def php_map(data: dict) -> Any:
    """PHP json_encode of an array: [] when empty, a list when keyed 0..n-1, else an object."""
    if not data:
        return []
    keys = list(data)
    if keys == [str(i) for i in range(len(keys))]:
        return list(data.values())
    return data


def _lookup(scope: dict, kind: str, path: str) -> Any:
    node: Any = scope[kind]
    for key in _KEY.findall(path):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.lstrip("-").isdigit() and -len(node) <= int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def _as_text(value: Any) -> str:
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, (list, dict)):
        return "Array"
    return str(value)


def substitute(value: Any, scope: dict) -> Any:
    if isinstance(value, str):
        whole = _REF.fullmatch(value.strip())
        if whole:
            found = _lookup(scope, whole.group(1), whole.group(2))
            return "" if found is None else found
        if "$result" not in value:
            return value
        return _REF.sub(lambda m: _as_text(_lookup(scope, m.group(1), m.group(2))), value)
    if isinstance(value, dict):
        return {k: substitute(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, scope) for v in value]
    return value


def run_batch(portal: "Portal", params: Params, identity: "Identity") -> Result:
    cmd = params.get("cmd")
    halt = php_truthy(params.get("halt", 0))
    if isinstance(cmd, dict):
        items = [(str(k), v) for k, v in cmd.items()]
    elif isinstance(cmd, list):
        items = [(str(i), v) for i, v in enumerate(cmd)]
    else:
        items = []
    results: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    totals: dict[str, Any] = {}
    nexts: dict[str, Any] = {}
    times: dict[str, Any] = {}
    scope = {"result": results, "result_error": errors, "result_total": totals, "result_next": nexts,
             "result_time": times}
    processing = 0.0
    for position, (key, command) in enumerate(items):
        if position >= MAX_COMMANDS:
            errors[key] = {"error": BATCH_LENGTH[1], "error_description": BATCH_LENGTH[2]}
            if halt:
                break
            continue
        method, _, query = str(command).partition("?")
        sub_params = substitute(parse_php_query(query), scope)
        status, body = portal.run_method(method.strip().lower(), sub_params, identity, nested=True)
        if "error" in body:
            errors[key] = {"error": body["error"], "error_description": body.get("error_description", "")}
            if halt:
                break
            continue
        results[key] = body.get("result")
        if "total" in body:
            totals[key] = body["total"]
        if "next" in body:
            nexts[key] = body["next"]
        times[key] = body["time"]
        processing += body["time"].get("processing", 0.0)
    payload = {"result": php_map(results), "result_error": php_map(errors), "result_total": php_map(totals),
               "result_next": php_map(nexts), "result_time": php_map(times)}
    return Result(payload, cost=0.0, extra={"processing": processing})


@method("batch")
def _batch_placeholder(call: Call) -> Result:  # pragma: no cover - Portal.run_method handles batch itself
    raise RuntimeError("batch is dispatched by Portal.run_method")

"""Request decoding: query strings and form bodies with PHP bracket keys, JSON and multipart bodies.

Sources: settings/how-to-call-rest-api/general-principles.md and data-encoding.md (b24restdocs):
parameters may come as a GET query string, a JSON body or a form body; arrays use PHP syntax
(``select[]=ID``, ``filter[>ID]=5``, ``fields[PHONE][0][VALUE]=...``). Bitrix is PHP, so the rules
are PHP's ``parse_str``: ``[]`` appends, later keys win, ``.`` and space in a top-level name become
``_``. A PHP array whose keys are exactly 0..n-1 is a list (that is also how PHP's json_encode
emits it), everything else is an ordered dict with string keys. Query-string and body parameters are
merged (PHP ``$_REQUEST``), body winning.
"""

from __future__ import annotations

import json
import re
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import unquote_plus

_SEGMENT = re.compile(r"\[([^\]]*)\]")


class DecodeError(ValueError):
    pass


def _assign(target: dict, key: str, value: Any) -> None:
    bracket = key.find("[")
    if bracket <= 0:
        base, rest = (key if bracket < 0 else ""), ""
        if bracket == 0:
            return
    else:
        base, rest = key[:bracket], key[bracket:]
    if not base:
        return
    base = base.replace(".", "_").replace(" ", "_")
    segments: list[str] = []
    pos = 0
    while pos < len(rest):
        match = _SEGMENT.match(rest, pos)
        if not match:
            break  # PHP ignores what follows a malformed bracket
        segments.append(match.group(1))
        pos = match.end()
    path = [base, *segments]
    node = target
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if part == "":
            ints = [int(k) for k in node if isinstance(k, str) and k.lstrip("-").isdigit()]
            part = str(max(ints) + 1 if ints else 0)
        if last:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child


def php_lists(value: Any) -> Any:
    """Turn dicts keyed exactly "0".."n-1" (in order) into lists, recursively."""
    if isinstance(value, dict):
        converted = {k: php_lists(v) for k, v in value.items()}
        keys = list(converted)
        if keys and keys == [str(i) for i in range(len(keys))]:
            return list(converted.values())
        return converted
    if isinstance(value, list):
        return [php_lists(v) for v in value]
    return value


def parse_php_query(query: str) -> dict:
    out: dict = {}
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        _assign(out, unquote_plus(key), unquote_plus(value))
    result = php_lists(out)
    return result if isinstance(result, dict) else {}


def parse_body(content_type: str, body: bytes) -> dict:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if not body:
        return {}
    if ctype == "application/json" or (not ctype and body.lstrip()[:1] in (b"{", b"[")):
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DecodeError(f"body is not valid JSON: {exc}") from None
        if isinstance(data, list):
            data = {str(i): v for i, v in enumerate(data)}
        return data if isinstance(data, dict) else {}
    if ctype == "multipart/form-data":
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        out: dict = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name is None:
                continue
            payload = part.get_payload(decode=True) or b""
            _assign(out, name, payload.decode("utf-8", "replace"))
        result = php_lists(out)
        return result if isinstance(result, dict) else {}
    try:
        return parse_php_query(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise DecodeError("form body is not UTF-8") from None


class Params:
    """Top-level request parameters with case-insensitive lookup (legacy methods accept FILTER/filter)."""

    def __init__(self, data: dict, *, case_insensitive: bool = True):
        self.data = data
        self.ci = case_insensitive

    def get(self, name: str, default: Any = None) -> Any:
        if name in self.data:
            return self.data[name]
        if self.ci:
            lower = name.lower()
            for key, value in self.data.items():
                if isinstance(key, str) and key.lower() == lower:
                    return value
        return default

    def has(self, name: str) -> bool:
        sentinel = object()
        return self.get(name, sentinel) is not sentinel

    def exact(self, name: str, default: Any = None) -> Any:
        return self.data.get(name, default)


def php_intval(value: Any) -> int:
    """PHP intval(): leading integer of a string, 0 when there is none; bools as 0/1."""
    if value is None or value is False:
        return 0
    if value is True:
        return 1
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, (list, dict)):
        return 1 if value else 0
    match = re.match(r"\s*([+-]?\d+)", str(value))
    return int(match.group(1)) if match else 0


def php_truthy(value: Any) -> bool:
    """How PHP (and Bitrix's Y/N handling) reads a flag such as ``halt``."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "n", "false", "no")
    return bool(value)


def http_build_query(params: Any, prefix: str | None = None) -> str:
    """PHP http_build_query (used by tests and batch helpers): nested keys as ``a[b][0]=v``."""
    from urllib.parse import quote_plus

    parts: list[str] = []
    items = params.items() if isinstance(params, dict) else enumerate(params)
    for key, value in items:
        full = f"{prefix}[{key}]" if prefix is not None else str(key)
        if isinstance(value, (dict, list, tuple)):
            parts.append(http_build_query(value if not isinstance(value, tuple) else list(value), full))
        else:
            if value is True:
                value = "1"
            elif value is False or value is None:
                value = ""
            parts.append(f"{quote_plus(full, safe='[]')}={quote_plus(str(value))}")
    return "&".join(p for p in parts if p)

"""Logs: one JSON object per line when not on a terminal, readable lines on one; secrets redacted.

* Context: :func:`bind` sets ``run_id``, ``portal`` and ``stage`` for everything logged in the block
  (contextvars, so threads and nested calls see the right values).
* Redaction: every secret of the loaded config (webhook URLs, tokens, client secrets, passwords in the
  state URL) and anything shaped like one (a Bitrix24 webhook path ``/rest/1/<code>/``, ``access_token=``,
  ``Authorization:`` values, ``auth[...]=``) is replaced by ``***`` in messages *and* in exception
  tracebacks, before anything is written.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any, Iterator

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("lifecycle_log_context", default={})
_secrets: list[str] = []
PATTERNS = [
    (re.compile(r"(/rest/\d+/)[A-Za-z0-9]{6,}"), r"\1***"),
    (re.compile(r"((?:access_token|refresh_token|client_secret|auth\[[a-z_]+\]|token)=)[^&\s\"']+", re.I), r"\1***"),
    (re.compile(r"((?:Authorization|X-Refresh-Token)[\"']?\s*[:=]\s*[\"']?(?:Bearer |OAuth )?)[^\s\"',}]+", re.I), r"\1***"),
    (re.compile(r"(postgresql(?:\+\w+)?://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
]


def register_secrets(values: list[str | None]) -> None:
    """Remember secret values (longest first) so no log line or traceback shows them."""
    for value in values:
        if value and len(value) >= 4 and value not in _secrets:
            _secrets.append(value)
    _secrets.sort(key=len, reverse=True)


def secrets_of(settings: Any) -> list[str]:
    out: list[str] = []

    def walk(model: Any) -> None:
        for name in getattr(model, "model_fields", {}):
            value = getattr(model, name)
            if hasattr(value, "get_secret_value"):
                out.append(value.get_secret_value())
            elif hasattr(value, "model_fields"):
                walk(value)

    walk(settings)
    url = settings.state.url
    match = re.match(r"^[^:]+://[^:/@]+:([^@]+)@", url)
    if match:
        out.append(match.group(1))
    return out


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "***")
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@contextlib.contextmanager
def bind(**values: Any) -> Iterator[None]:
    token = _context.set({**_context.get(), **{k: v for k, v in values.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
            **_context.get(),
        }
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = _context.get()
        where = " ".join(f"{k}={v}" for k, v in ctx.items())
        line = f"{datetime.now().strftime('%H:%M:%S')} {record.levelname:<7} {redact(record.getMessage())}"
        if where:
            line += f"  [{where}]"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def setup(json_lines: bool | None = None, level: int = logging.INFO) -> None:
    """JSON lines unless stderr is a terminal (or as told); replaces any earlier handlers."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.set_name("lifecycle")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "lifecycle" or type(old) is logging.StreamHandler:
            root.removeHandler(old)  # ours from an earlier call, or a basicConfig one; others (e.g. pytest's) stay
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("fast_bitrix24").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)

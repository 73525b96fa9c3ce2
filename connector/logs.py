"""Logs: one JSON object per line when not on a terminal, readable lines on one; secrets redacted.

* Context: :func:`bind` sets ``run_id``, ``portal`` and ``stage`` for everything logged in the block
  (contextvars, so threads and nested calls see the right values).
* Redaction: every secret of the loaded config (webhook URLs, tokens, client secrets, passwords in the
  state URL) and anything shaped like one (a Bitrix24 webhook path ``/rest/1/<code>/``, ``access_token=``,
  ``Authorization:`` values, ``auth[...]=``) is replaced by ``***`` in messages *and* in exception
  tracebacks, before anything is written.
* One :func:`redact` for every output path (log lines, the CLI's ``error:`` line, ``runs.error``, pages):
  each configured secret is masked in every form it travels in (raw, URL-encoded, JSON-escaped), and so
  are the webhook URL's path segments (a portal echoing ``/api/<code>/`` back), URL userinfo and the
  password of the state URL. :func:`safe_error` turns an exception into one line for an operator; for
  database errors it keeps the driver's message only, never the SQL or its parameters (customer data).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import urllib.parse
from datetime import datetime, timezone
from typing import Any, Iterator

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("lifecycle_log_context", default={})
_secrets: list[str] = []
PATTERNS = [
    (re.compile(r"(/rest/\d+/)[A-Za-z0-9]{6,}"), r"\1***"),
    (re.compile(r"((?:access_token|refresh_token|client_secret|auth\[[a-z_]+\]|token)=)[^&\s\"']+", re.I), r"\1***"),
    (re.compile(r"((?:Authorization|X-Refresh-Token)[\"']?\s*[:=]\s*[\"']?(?:Bearer |OAuth )?)[^\s\"',}]+", re.I), r"\1***"),
    (re.compile(r"(postgresql(?:\+\w+)?://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
    (re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s\"']+@", re.I), r"\1***@"),  # any URL's userinfo
    # SQLAlchemy appends the statement's parameters (customer names, phones, e-mails) to its messages
    (re.compile(r"\[parameters: .*?(?=\n\(Background on this error|\Z)", re.S), "[parameters hidden]"),
]
# Path segments of a CRM URL that are words, not secrets: never registered as secrets on their own.
PLAIN_SEGMENTS = {"rest", "api", "v2", "v4", "oauth", "token", "webhook", "hook", "crm", "bitrix24", "amocrm"}


def forms_of(value: str) -> set[str]:
    """Every form a secret travels in: raw, URL-encoded (either case of hex, + for space), URL-decoded,
    JSON-escaped; for a URL also its userinfo and each path segment that is not a plain word."""
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote(value), urllib.parse.quote_plus(value),
             urllib.parse.unquote(value), value.replace("/", "\\/")}
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in list(forms) if "%" in f}
    if "://" in value:
        parts = urllib.parse.urlsplit(value)
        if parts.username:
            forms.add(parts.username)
        if parts.password:
            forms |= {parts.password, urllib.parse.unquote(parts.password)}
        for segment in parts.path.split("/"):
            decoded = urllib.parse.unquote(segment)
            if len(decoded) >= 4 and not decoded.isdigit() and decoded.lower() not in PLAIN_SEGMENTS:
                forms |= {segment, decoded}
        if parts.query:
            forms.add(parts.query)
    return {f for f in forms if len(f) >= 4}


def register_secrets(values: list[str | None]) -> None:
    """Remember secret values in all their forms (longest first) so no output shows them."""
    for value in values:
        if not value or len(value) < 4:
            continue
        for form in forms_of(value):
            if form not in _secrets:
                _secrets.append(form)
    _secrets.sort(key=len, reverse=True)


ENV_PREFIX = "LIFECYCLE_"
SECRET_KEYS = {"webhook_url", "client_secret", "refresh_token", "access_token", "authorization_code", "yandex_token",
               "vk_client_secret", "google_access_token", "meta_access_token", "bitrix24_application_token",
               "amocrm_webhook_secret"}  # config keys whose values are never echoed in errors


def register_env_secrets(environ: dict[str, str] | None = None, names: set[str] | None = None) -> None:
    """Secrets given as ``LIFECYCLE_<SECTION>__<KEY>`` (and the state URL's password), registered even
    before the configuration validates, so an error about a bad value cannot echo a good secret."""
    import os

    wanted = names or SECRET_KEYS
    for key, value in (environ if environ is not None else os.environ).items():
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        last = upper.rsplit("__", 1)[-1].lower()
        if last in wanted:
            register_secrets([value])
        elif last == "url":
            match = re.match(r"^[^:]+://[^:/@]*:([^@]+)@", value)
            if match:
                register_secrets([match.group(1)])


def secrets_of(settings: Any) -> list[str]:
    out: list[str] = []

    def walk(model: Any) -> None:
        for name in getattr(type(model), "model_fields", {}):
            value = getattr(model, name)
            if hasattr(value, "get_secret_value"):
                out.append(value.get_secret_value())
            elif hasattr(type(value), "model_fields"):
                walk(value)

    walk(settings)
    url = settings.state.url
    match = re.match(r"^[^:]+://[^:/@]+:([^@]+)@", url)
    if match:
        out.append(match.group(1))
    return out


def redact(text: str) -> str:
    """The one redaction every output goes through."""
    text = str(text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def safe_error(exc: BaseException) -> str:
    """One redacted line about ``exc`` for an operator, a run record or a page.

    A database error (SQLAlchemy wraps the driver's) says the driver's exception class and the first line
    of its message ("OperationalError: database or disk is full"), never the statement or its parameters.
    Recursion and huge-number errors name what to fix instead of Python's internals.
    """
    try:
        import sqlalchemy as sa
    except ImportError:  # pragma: no cover - a dependency
        sa = None  # type: ignore[assignment]
    if sa is not None and isinstance(exc, sa.exc.StatementError):
        orig = exc.orig if exc.orig is not None else exc
        first = (str(orig).strip().splitlines() or [""])[0] if exc.orig is not None else "database statement failed"
        return redact(f"{type(orig).__name__}: {first}" + hint_for_database_error(first))
    if sa is not None and isinstance(exc, sa.exc.SQLAlchemyError):
        first = (str(exc).strip().splitlines() or [""])[0]
        return redact(f"{type(exc).__name__}: {first}")
    if isinstance(exc, RecursionError):
        return "RecursionError: a structure nests too deeply (a rule chain or a nested value); simplify it"
    text = str(exc)
    lines = text.strip().splitlines()
    line = " / ".join(part.strip() for part in lines if part.strip()) if len(lines) <= 12 else lines[0]
    return redact(f"{type(exc).__name__}: {line}" if line else type(exc).__name__)


def hint_for_database_error(message: str) -> str:
    low = message.lower()
    if "disk is full" in low or "no space left" in low:
        return "; free disk space where [state] url points"
    if "readonly" in low or "read-only" in low:
        return "; make the [state] url file and its folder writable"
    return ""


@contextlib.contextmanager
def bind(**values: Any) -> Iterator[None]:
    token = _context.set({**_context.get(), **{k: v for k, v in values.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def format_exception(formatter: logging.Formatter, exc_info: Any) -> str:
    """A redacted traceback whose last line is :func:`safe_error` (no SQL parameters, no secrets)."""
    text = redact(formatter.formatException(exc_info))
    exc = exc_info[1] if isinstance(exc_info, tuple) else None
    if exc is None:
        return text
    lines = text.splitlines()
    # keep the frames (file, line, code), replace what follows the last frame by the safe line
    cut = max((i for i, line in enumerate(lines) if line.startswith("  ")), default=-1)
    return "\n".join(lines[: cut + 1] + [safe_error(exc)])


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
            out["exc"] = format_exception(self, record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = _context.get()
        where = " ".join(f"{k}={v}" for k, v in ctx.items())
        line = f"{datetime.now().strftime('%H:%M:%S')} {record.levelname:<7} {redact(record.getMessage())}"
        if where:
            line += f"  [{where}]"
        if record.exc_info:
            line += "\n" + format_exception(self, record.exc_info)
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

"""Dashboard accounts, the session key, CSRF tokens and the login throttle.

* Accounts live in the state store (``dash_users``): e-mail, an argon2id hash (argon2-cffi), role ``admin``
  (every portal) or ``viewer`` (only the portals granted), an optional language. ``lifecycle users add``.
* Sessions are Starlette's signed cookies (itsdangerous) keyed by ``LIFECYCLE_SECRET_KEY``; without it, by a
  random key kept in ``dashboard-secret.key`` next to the SQLite state file (created 0600 on first use).
  PostgreSQL state needs the variable (several web processes must share one key).
* Every form carries the session's CSRF token; a POST without the right one is refused (403).
* Login attempts: at most 5 per minute per client address and e-mail; the sixth is refused with 429.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from connector.config import ConfigError
from connector.dashboard import schema

ROLES = ("admin", "viewer")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 8
SECRET_ENV = "LIFECYCLE_SECRET_KEY"
KEY_FILE = "dashboard-secret.key"
_hasher = PasswordHasher()
# verified against when the e-mail is unknown, so a missing account costs the same time as a wrong password
_DUMMY = _hasher.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if not EMAIL.match(email):
        raise ConfigError(f"{email!r} is not an e-mail address; use name@example.com")
    return email


def add_user(engine: sa.Engine, email: str, role: str, portals: list[str], password: str,
             language: str | None = None) -> bool:
    """Create the account, or update its role, portals and password; True if it was new."""
    email = normalise_email(email)
    if role not in ROLES:
        raise ConfigError(f"--role {role!r}: use admin or viewer")
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"the password must have at least {MIN_PASSWORD} characters")
    if role == "viewer" and not portals:
        raise ConfigError("a viewer needs at least one --portal NAME (the portals they may see)")
    values = {"password_hash": hash_password(password), "role": role, "portals": json.dumps(sorted(set(portals))),
              "language": language}
    u = schema.users.c
    with engine.begin() as conn:
        done = conn.execute(sa.update(schema.users).where(u.email == email).values(values))
        if done.rowcount:
            return False
        conn.execute(sa.insert(schema.users).values(email=email, created_at=datetime.now(timezone.utc), **values))
        return True


def remove_user(engine: sa.Engine, email: str) -> bool:
    with engine.begin() as conn:
        return bool(conn.execute(sa.delete(schema.users).where(schema.users.c.email == email.strip().lower())).rowcount)


def list_users(engine: sa.Engine) -> list[dict[str, Any]]:
    """Accounts without their hashes."""
    u = schema.users.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(u.id, u.email, u.role, u.portals, u.language, u.created_at).order_by(u.email)).mappings()
        return [dict(r) | {"portals": json.loads(r["portals"])} for r in rows]


def get_user(engine: sa.Engine, user_id: int) -> dict[str, Any] | None:
    u = schema.users.c
    with engine.connect() as conn:
        row = conn.execute(sa.select(u.id, u.email, u.role, u.portals, u.language).where(u.id == user_id)).mappings().first()
    return dict(row) | {"portals": json.loads(row["portals"])} if row else None


def authenticate(engine: sa.Engine, email: str, password: str) -> dict[str, Any] | None:
    u = schema.users.c
    with engine.connect() as conn:
        row = conn.execute(sa.select(u.id, u.password_hash).where(u.email == email.strip().lower())).first()
    if row is None:
        check_password(_DUMMY, password)
        return None
    return get_user(engine, row.id) if check_password(row.password_hash, password) else None


def set_language(engine: sa.Engine, user_id: int, language: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(schema.users).where(schema.users.c.id == user_id).values(language=language))


def may_see(user: dict[str, Any], portal: str) -> bool:
    if user.get("scope"):  # a Bitrix24 app session: its own portal, whatever the role
        return portal == user["scope"]
    return user["role"] == "admin" or portal in user["portals"]


def may_configure(user: dict[str, Any], portal: str) -> bool:
    """Administrators see the settings (an app session's admin role is the portal's ``user.admin``)."""
    return user["role"] == "admin" and may_see(user, portal)


def secret_key(state_url: str) -> str:
    """``LIFECYCLE_SECRET_KEY``, or the key file next to the SQLite state (created 0600 on first use)."""
    value = os.environ.get(SECRET_ENV, "").strip()
    if value:
        if len(value) < 16:
            raise ConfigError(f"{SECRET_ENV} is too short: use at least 16 random characters "
                              "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return value
    url = sa.make_url(state_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database.startswith("file:"):
        raise ConfigError(f"the dashboard needs {SECRET_ENV} (the key that signs session cookies) when the state "
                          "is not an SQLite file; set it to at least 16 random characters")
    path = Path(url.database).resolve().parent / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    return path.read_text(encoding="ascii").strip()


def csrf_token(session: dict[str, Any]) -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token


def csrf_ok(session: dict[str, Any], sent: str | None) -> bool:
    token = session.get("csrf")
    return bool(token and sent) and hmac.compare_digest(str(token), str(sent))


def client_address(request: Any) -> str:
    """The address a throttle counts a request under (uvicorn's, X-Forwarded-For from a trusted proxy)."""
    return request.client.host if request.client else "-"


class LoginThrottle:
    """At most ``limit`` login attempts per ``window`` seconds per (client address, e-mail)."""

    def __init__(self, limit: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self.attempts: dict[tuple[str, str], deque[float]] = {}
        self.lock = threading.Lock()

    def allow(self, address: str, email: str) -> bool:
        """Count an attempt; False when it is over the limit (and then it is not counted)."""
        now = self.clock()
        key = (address, email.strip().lower())
        with self.lock:
            if len(self.attempts) > 10_000:  # forget idle keys: memory stays bounded under a spray
                self.attempts = {k: q for k, q in self.attempts.items() if q and q[-1] > now - self.window}
            seen = self.attempts.setdefault(key, deque())
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if len(seen) >= self.limit:
                return False
            seen.append(now)
            return True

    def exhausted(self, address: str, email: str) -> bool:
        """True when the next attempt would be refused (nothing is counted)."""
        now = self.clock()
        with self.lock:
            seen = self.attempts.get((address, email.strip().lower()))
            return seen is not None and sum(1 for t in seen if t > now - self.window) >= self.limit

    def reset(self, address: str, email: str) -> None:
        with self.lock:
            self.attempts.pop((address, email.strip().lower()), None)

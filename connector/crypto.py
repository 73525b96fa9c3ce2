"""Secrets at rest: Fernet encryption of what the state store keeps secret (portal configs in the registry,
OAuth access and refresh tokens).

* The key comes from ``LIFECYCLE_SECRET_KEY`` (or ``LIFECYCLE_SECRET_KEY_FILE``, a Docker secret: see
  connector/envfiles.py) or is given to :func:`configure` (``Registry.open(key=...)``). Make one with
  ``lifecycle secrets new-key``.
* An encrypted value is stored as ``fernet:<token>``; a value without the prefix is plain text (a store
  written without a key: single-portal SQLite works without one, as before).
* Reading an encrypted value without the key, or with another key, is a :class:`SecretKeyError` (a
  ConfigError: one line, exit 2) naming what to set, never a silent fallback (a fallback would re-issue
  OAuth tokens and lock the integration out).
* ``meta.secret_check`` holds a known text encrypted with the current key, so a process finds a wrong or
  missing key when it opens the store, before it reads anything else.
"""

from __future__ import annotations

import os

from connector.config import ConfigError

PREFIX = "fernet:"
KEY_VAR = "LIFECYCLE_SECRET_KEY"
CHECK_KEY = "secret_check"  # meta.key of the check value
CHECK_TEXT = "crm-lifecycle secret check"
NO_KEY = (f"the state store holds encrypted secrets but no key is set: set {KEY_VAR} (or {KEY_VAR}_FILE) to the key "
          "they were written with")
WRONG_KEY = (f"{KEY_VAR} does not decrypt the secrets in the state store (a different key); set the key they were "
             "written with (after `lifecycle secrets rotate`, the new one)")


class SecretKeyError(ConfigError):
    """The secret key is missing, malformed or not the one the store's secrets were written with."""


_explicit: list[str | None] = []  # [key] once configure() was called with one; else the environment decides
_cache: dict[str, object] = {}


def configure(key: str | None) -> None:
    """Use ``key`` for this process (``None``: back to the environment)."""
    _explicit.clear()
    if key is not None:
        cipher_for(key)  # a malformed key fails here, at start
        _explicit.append(key)


def current_key() -> str | None:
    """The configured key: given to :func:`configure`, else ``LIFECYCLE_SECRET_KEY[_FILE]``, else None."""
    if _explicit:
        return _explicit[0]
    from connector.envfiles import EnvFileError, expand_secret_files

    try:
        expand_secret_files()
    except EnvFileError as exc:
        raise ConfigError(str(exc)) from None
    value = next((v for k, v in os.environ.items() if k.upper() == KEY_VAR), None)
    return value.strip() if value and value.strip() else None


def cipher_for(key: str, what: str = KEY_VAR):
    """A Fernet for ``key``; ``NEW,OLD``: encrypts with NEW, decrypts with either (a MultiFernet, for a
    rotation without downtime). A malformed key is a :class:`SecretKeyError` that never shows the key."""
    if key in _cache:
        return _cache[key]
    from cryptography.fernet import Fernet, MultiFernet

    from connector import logs

    parts = [p.strip() for p in key.split(",") if p.strip()]
    logs.register_secrets(parts)
    try:
        fernets = [Fernet(p.encode()) for p in parts]
    except (ValueError, TypeError):
        fernets = []
    if not fernets:
        raise SecretKeyError(f"the secret key ({what}) is not a Fernet key (44 characters of url-safe base64); "
                             "make one with `lifecycle secrets new-key`")
    fernet = fernets[0] if len(fernets) == 1 else MultiFernet(fernets)
    _cache[key] = fernet
    return fernet


def cipher():
    key = current_key()
    return None if key is None else cipher_for(key)


def new_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def is_encrypted(value: str | None) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def encrypt(text: str | None, fernet=None) -> str | None:
    """``text`` encrypted with the configured key (``fernet`` if given); unchanged when no key is set."""
    if text is None or is_encrypted(text):
        return text
    f = fernet if fernet is not None else cipher()
    return text if f is None else PREFIX + f.encrypt(text.encode("utf-8")).decode("ascii")


def decrypt(value: str | None, fernet=None) -> str | None:
    """The plain text of a stored value; plain values pass through."""
    if not is_encrypted(value):
        return value
    from cryptography.fernet import InvalidToken

    f = fernet if fernet is not None else cipher()
    if f is None:
        raise SecretKeyError(NO_KEY)
    try:
        return f.decrypt(value[len(PREFIX):].encode("ascii")).decode("utf-8")  # type: ignore[index]
    except (InvalidToken, ValueError):
        raise SecretKeyError(WRONG_KEY) from None


def check_store(conn) -> None:
    """At open: a store whose secrets are encrypted needs the key they were written with."""
    import sqlalchemy as sa

    from connector.store.schema import meta_table

    row = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == CHECK_KEY)).first()
    if row is None:
        return
    if decrypt(row[0]) != CHECK_TEXT:  # raises without a key or with another one
        raise SecretKeyError(WRONG_KEY)


def write_check(conn, fernet) -> None:
    """Record (or replace) the check value for the key of ``fernet``."""
    import sqlalchemy as sa

    from connector.store.schema import meta_table

    conn.execute(sa.delete(meta_table).where(meta_table.c.key == CHECK_KEY))
    conn.execute(sa.insert(meta_table).values(key=CHECK_KEY, value=encrypt(CHECK_TEXT, fernet)))


def ensure_check(conn) -> None:
    """Write the check value for the configured key unless the store has one (the first encrypted secret)."""
    import sqlalchemy as sa

    from connector.store.schema import meta_table

    if conn.execute(sa.select(meta_table.c.key).where(meta_table.c.key == CHECK_KEY)).first() is None:
        write_check(conn, cipher())

"""The Bitrix24 application credentials one deployment serves (docs/apps.md, "Many local applications").

A Market application has one ``client_id``/``client_secret`` for every portal; a *local* application is
created in each client portal separately and gets its own pair. The connector knows:

* the single pair ``LIFECYCLE_BITRIX24_CLIENT_ID`` / ``LIFECYCLE_BITRIX24_CLIENT_SECRET`` (as before), and
* the pairs stored in the registry by ``lifecycle apps bitrix24 add-credentials`` (connector/apps/b24_cli.py):
  rows ``bitrix24_app:<client_id>`` of the store's ``meta`` table, the secret encrypted with
  ``LIFECYCLE_SECRET_KEY`` (re-encrypted by ``lifecycle secrets rotate`` with the rest), read at every
  installation, so a pair added there is seen at once by every service process, and
* the entries of ``LIFECYCLE_BITRIX24_APPS_PATH``: a TOML file ::

      [[app]]
      client_id = "local.6650a1b2c3d4e5.12345678"
      client_secret = "..."
      note = "shop.bitrix24.ru"          # optional, for the integrator; never read

  or a JSON file (name ending in ``.json``): ``[{"client_id": ..., "client_secret": ...}, ...]`` or
  ``{"app": [...]}``.

(The name ends in ``_PATH``, not ``_FILE``: ``LIFECYCLE_..._FILE`` variables are read as Docker-secret files
holding one value, connector/envfiles.py.) The file is read again whenever it changes (its modification time and size), so a new portal's pair is
added without restarting the service. A file broken at start is a one-line ConfigError; broken later, the
last good list stays in use and the error is logged (once per change). No message ever contains a secret:
entries are named by their position and client id only. The secrets are registered with the log redaction
(connector/logs.py) as they are read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from connector.config import ConfigError

log = logging.getLogger("lifecycle.apps.bitrix24")


@dataclass(frozen=True)
class ClientPair:
    client_id: str
    client_secret: str = field(repr=False)


def parse_apps(text: str, source: str, *, as_json: bool) -> list[ClientPair]:
    """The entries of an apps file; raises a one-line ConfigError naming the entry (never its secret)."""
    try:
        data: Any = json.loads(text) if as_json else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if as_json else "TOML"
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigError(f"{source}: not valid {kind}{where}: fix the file") from None
    entries = data.get("app", data.get("apps")) if isinstance(data, dict) else data
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: write the applications as [[app]] tables (TOML) or a JSON list of "
                          "{\"client_id\": ..., \"client_secret\": ...} objects")
    out: dict[str, ClientPair] = {}
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: entry {i} is not a table/object with client_id and client_secret")
        client_id, secret = entry.get("client_id"), entry.get("client_secret")
        if not isinstance(client_id, str) or not client_id.strip():
            raise ConfigError(f"{source}: entry {i} has no client_id (the application code from the local "
                              "application form)")
        client_id = client_id.strip()
        if not isinstance(secret, str) or not secret.strip():
            raise ConfigError(f"{source}: entry {i} ({client_id}) has no client_secret")
        unknown = sorted(set(entry) - {"client_id", "client_secret", "note"})
        if unknown:
            raise ConfigError(f"{source}: entry {i} ({client_id}) has unknown key(s) {', '.join(unknown)}; "
                              "allowed: client_id, client_secret, note")
        pair = ClientPair(client_id, secret.strip())
        if client_id in out and out[client_id] != pair:
            raise ConfigError(f"{source}: client_id {client_id} is given twice with different secrets: keep one")
        out[client_id] = pair
    return list(out.values())


class Bitrix24Credentials:
    """The single pair (if any) first, then the apps file's entries, re-read when the file changes."""

    def __init__(self, single: ClientPair | None = None, path: str | os.PathLike | None = None):
        self.single = single
        self.path = Path(path) if path else None
        self.stored: Callable[[], list[ClientPair]] | None = None  # the registry's pairs (set by the app)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._bad_stamp: tuple[int, int] | None = None
        self._file: list[ClientPair] = []
        if self.path is not None:
            self._reload(strict=True)

    @property
    def configured(self) -> bool:
        """Whether any source of credentials is set (an empty apps file counts: pairs are added later)."""
        return self.single is not None or self.path is not None or bool(self._stored())

    def _stored(self) -> list[ClientPair]:
        return self.stored() if self.stored is not None else []

    def _reload(self, *, strict: bool) -> None:
        from connector import logs

        assert self.path is not None
        name = "LIFECYCLE_BITRIX24_APPS_PATH"
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            error = ConfigError(f"{name} {self.path}: cannot read it ({type(exc).__name__}): check the path and "
                                "its permissions")
            stamp = None
        else:
            try:
                pairs = parse_apps(text, f"{name} {self.path}", as_json=self.path.suffix.lower() == ".json")
            except ConfigError as exc:
                error = exc
            else:
                logs.register_secrets([p.client_secret for p in pairs])
                self._file, self._stamp, self._bad_stamp = pairs, stamp, None
                return
        if strict:
            raise error
        if stamp is None or stamp != self._bad_stamp:  # log a broken file once per change
            log.error("%s; the previous list of %d application(s) stays in use", error, len(self._file))
            self._bad_stamp = stamp

    def pairs(self) -> list[ClientPair]:
        """Every configured pair, the single one first, then the registry's, then the file's; each client id
        once (the first source wins)."""
        if self.path is not None:
            with self._lock:
                self._reload(strict=False)
        seen: dict[str, ClientPair] = {}
        for pair in ([self.single] if self.single else []) + self._stored() + self._file:
            seen.setdefault(pair.client_id, pair)
        return list(seen.values())

    def get(self, client_id: str | None) -> ClientPair | None:
        return next((p for p in self.pairs() if client_id and p.client_id == client_id), None)

    def ordered(self, first: Iterable[str | None]) -> list[ClientPair]:
        """Every pair, those whose client ids are in ``first`` (in that order: a hint, the pair recorded for
        the portal) ahead of the rest."""
        pairs = self.pairs()
        front = [p for cid in first for p in pairs if cid and p.client_id == cid]
        out: list[ClientPair] = []
        for pair in front + pairs:
            if pair not in out:
                out.append(pair)
        return out


# -- pairs stored in the registry (encrypted) -------------------------------------------------------

META_PREFIX = "bitrix24_app:"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,50}$")


def check_client_id(client_id: str) -> str:
    client_id = (client_id or "").strip()
    if not _CLIENT_ID.match(client_id):
        raise ConfigError("--client-id: give the application code from the form, e.g. local.6650a1b2c3d4e5.12345678 "
                          "(letters, digits, '.', '_', '-'; at most 51 characters)")
    return client_id


def stored_pairs(engine: Any) -> list[ClientPair]:
    """The registry's pairs, decrypted (sorted by client id)."""
    import sqlalchemy as sa

    from connector import crypto, logs
    from connector.store.schema import meta_table

    with engine.connect() as conn:
        rows = conn.execute(sa.select(meta_table.c.key, meta_table.c.value)
                            .where(meta_table.c.key.like(META_PREFIX + "%")).order_by(meta_table.c.key)).all()
    pairs = [ClientPair(key[len(META_PREFIX):], crypto.decrypt(value) or "") for key, value in rows]
    logs.register_secrets([p.client_secret for p in pairs])
    return pairs


def store_pair(engine: Any, pair: ClientPair) -> bool:
    """Add (True) or replace (False) a pair; the secret is encrypted with the configured key, which must be set."""
    import sqlalchemy as sa

    from connector import crypto
    from connector.store.base import write_lock
    from connector.store.schema import meta_table

    fernet = crypto.cipher()
    if fernet is None:
        raise crypto.SecretKeyError(f"{crypto.KEY_VAR} is not set: application secrets are stored only encrypted "
                                    "(make a key with `lifecycle secrets new-key`)")
    key = META_PREFIX + check_client_id(pair.client_id)
    with engine.begin() as conn:
        write_lock(conn)
        crypto.ensure_check(conn)
        existed = conn.execute(sa.delete(meta_table).where(meta_table.c.key == key)).rowcount > 0
        conn.execute(sa.insert(meta_table).values(key=key, value=crypto.encrypt(pair.client_secret, fernet)))
    return not existed


def remove_pair(engine: Any, client_id: str) -> bool:
    import sqlalchemy as sa

    from connector.store.base import write_lock
    from connector.store.schema import meta_table

    with engine.begin() as conn:
        write_lock(conn)
        return conn.execute(sa.delete(meta_table).where(meta_table.c.key == META_PREFIX + client_id.strip())).rowcount > 0


def reencrypt_pairs(conn: Any, *, decrypt_with: Any, encrypt_with: Any) -> int:
    """``lifecycle secrets rotate`` (connector/registry.py ``reencrypt``): the stored pairs' secrets too."""
    import sqlalchemy as sa

    from connector import crypto
    from connector.store.schema import meta_table

    rows = conn.execute(sa.select(meta_table.c.key, meta_table.c.value)
                        .where(meta_table.c.key.like(META_PREFIX + "%"))).all()
    for key, value in rows:
        conn.execute(sa.update(meta_table).where(meta_table.c.key == key)
                     .values(value=crypto.encrypt(crypto.decrypt(value, decrypt_with), encrypt_with)))
    return len(rows)


__all__ = ["Bitrix24Credentials", "ClientPair", "check_client_id", "parse_apps", "remove_pair", "stored_pairs",
           "store_pair"]

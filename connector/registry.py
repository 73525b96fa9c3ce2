"""The portal registry: every portal a many-portal deployment serves, in the shared state store.

A portal is a name (``[a-z0-9][a-z0-9_-]{0,62}``), its CRM kind, its config (the same TOML as a single-portal
file, validated the same way, stored encrypted when a secret key is set: connector/crypto.py), a state and
the bookkeeping of its syncs. :meth:`Registry.load` gives the portal's config as a :class:`LoadedConfig`
with ``[crm] name`` = the portal name and ``[state] url`` = the registry's database, so
``pipeline.sync(registry.load(name))`` syncs that portal and keeps its data under its own name.

States: ``active`` (synced on schedule), ``paused`` (``portals pause``: not synced until resumed),
``failing`` (``failing_after`` failed syncs in a row; back to active on the next success), ``uninstalled``
(the CRM app was removed, or ``portals remove``). A removed portal is hidden from :meth:`Registry.list`
and keeps its data until ``remove --purge`` deletes every row of it in every table.

A registry portal reads no ``LIFECYCLE_<SECTION>__KEY`` overrides: they would apply to every portal alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector import crypto
from connector.config import ConfigError, LoadedConfig, StateConfig, load_config_text
from connector.store.base import now, write_lock
from connector.store.schema import meta_table, metadata, oauth_tokens, portal_keys, portals

PORTAL_STATES = ("active", "paused", "failing", "uninstalled")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ERROR_CHARS = 500


@dataclass(frozen=True)
class Portal:
    """One registry row; never holds the config or any secret."""

    name: str
    kind: str  # bitrix24 | amocrm | csv
    state: str
    failures: int  # consecutive failed syncs
    last_error: str | None
    last_run_at: datetime | None
    next_run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    removed: bool = False


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they are UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _portal(row: Any) -> Portal:
    return Portal(name=row.name, kind=row.kind, state=row.state, failures=row.failures or 0, last_error=row.last_error,
                  last_run_at=_aware(row.last_run_at), next_run_at=_aware(row.next_run_at),
                  created_at=_aware(row.created_at), updated_at=_aware(row.updated_at), removed=bool(row.removed))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"portal name {name!r} is not allowed; use 1-63 lower-case letters, digits, '-' or '_', "
                          "starting with a letter or digit (e.g. 'acme-shop')")
    return name


def _one_line(text: str | BaseException | None) -> str | None:
    """An error for the registry: one redacted line (an exception through logs.safe_error), at most 500 chars."""
    if text is None:
        return None
    from connector.logs import redact, safe_error

    if isinstance(text, BaseException):
        text = safe_error(text)

    line = " / ".join(part.strip() for part in str(text).splitlines() if part.strip())
    line = redact(line)
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 3] + "..."


class Registry:
    """The portals of one state store (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, url: str):
        self.engine = engine
        self.url = url

    @classmethod
    def open(cls, url: str, *, key: str | None = None) -> Registry:
        """Open (and upgrade) the store at ``url``; ``key`` (else ``LIFECYCLE_SECRET_KEY[_FILE]``) encrypts the
        secrets. Encrypted secrets with no key or another key: a :class:`crypto.SecretKeyError`."""
        from connector.store import StateStore

        if key is not None:
            crypto.configure(key)
        store = StateStore.open(url, "")  # checks the URL, migrates, checks the key against meta.secret_check
        registry = cls(store.engine, url)
        try:
            registry._seal()
        except BaseException:
            store.close()
            raise
        return registry

    def close(self) -> None:
        self.engine.dispose()

    # -- secrets -------------------------------------------------------------------------------------

    def _seal(self) -> None:
        """With a key: encrypt what is still plain (configs, OAuth tokens) and record the check value.
        Without one: refuse a store that holds encrypted secrets."""
        fernet = crypto.cipher()
        with self.engine.begin() as conn:
            if fernet is not None:  # processes starting together: one seals, the others then find it done
                if conn.dialect.name == "postgresql":
                    from connector.store.migrate import MIGRATION_LOCK_KEY

                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                write_lock(conn)
            if fernet is None:
                encrypted = conn.execute(sa.select(portals.c.name).where(portals.c.config.like(crypto.PREFIX + "%"))
                                         .limit(1)).first() or conn.execute(
                    sa.select(oauth_tokens.c.portal).where(oauth_tokens.c.refresh_token.like(crypto.PREFIX + "%"))
                    .limit(1)).first()
                if encrypted:
                    raise crypto.SecretKeyError(crypto.NO_KEY)
                return
            plain = conn.execute(sa.select(portals.c.name).where(sa.not_(portals.c.config.like(crypto.PREFIX + "%")))
                                 .limit(1)).first() or conn.execute(
                sa.select(oauth_tokens.c.portal).where(sa.not_(oauth_tokens.c.refresh_token.like(crypto.PREFIX + "%")))
                .limit(1)).first()
            has_check = conn.execute(sa.select(meta_table.c.key).where(meta_table.c.key == crypto.CHECK_KEY)).first()
            sealed = bool(plain or not has_check)
            if sealed:
                reencrypt(conn, decrypt_with=fernet, encrypt_with=fernet)
        if sealed:
            vacuum(self.engine)

    # -- portals -------------------------------------------------------------------------------------

    def _row(self, conn: Connection, name: str, *, removed_ok: bool = False, lock: bool = False) -> Any:
        query = sa.select(portals).where(portals.c.name == name)
        if lock and conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None or (row.removed and not removed_ok):
            raise ConfigError(f"no portal named {name!r}; see lifecycle portals list")
        return row

    def validate(self, name: str, config_text: str, *, base_dir: str | Path | None = None,
                 origin: str | Path | None = None) -> LoadedConfig:
        """The portal's config as :meth:`load` would give it; ConfigError saying what to fix."""
        check_name(name)
        loaded = load_config_text(config_text, origin or f"portal {name}", base=Path(base_dir) if base_dir else None,
                                  environment=False)
        return self._as_portal(loaded, name)

    def _as_portal(self, loaded: LoadedConfig, name: str) -> LoadedConfig:
        settings = loaded.settings
        settings = settings.model_copy(update={"crm": settings.crm.model_copy(update={"name": name}),
                                               "state": StateConfig(url=self.url)})
        return LoadedConfig(settings=settings, path=loaded.path, rules=loaded.rules)

    def add(self, name: str, config_text: str, *, replace: bool = False, base_dir: str | Path | None = None,
            origin: str | Path | None = None) -> Portal:
        """Register a portal (validated like ``load_config``); ``replace``: update an existing one's config.
        Adding a removed portal again brings it back, with the data it kept. Relative paths in the config
        resolve against ``base_dir`` (the config file's folder; default the current folder)."""
        loaded = self.validate(name, config_text, base_dir=base_dir, origin=origin)
        with self.engine.begin() as conn:
            write_lock(conn)
            self.put(conn, name, config_text, loaded, replace=replace, base_dir=base_dir)
        return self.get(name)

    def put(self, conn: Connection, name: str, config_text: str, loaded: LoadedConfig, *, replace: bool,
            base_dir: str | Path | None) -> None:
        """Insert or update the portal's row in the caller's transaction (``add``, ``import-state``)."""
        base = str(Path(base_dir).resolve()) if base_dir else str(Path.cwd())
        stored = crypto.encrypt(config_text)
        stamp = now()
        row = conn.execute(sa.select(portals).where(portals.c.name == name)).first()
        if row is None:
            conn.execute(sa.insert(portals).values(
                name=name, kind=loaded.crm.kind, state="active", config=stored, base_dir=base, failures=0,
                removed=False, created_at=stamp, updated_at=stamp))
        elif row.removed or replace:
            values: dict[str, Any] = {"kind": loaded.crm.kind, "config": stored, "base_dir": base, "updated_at": stamp}
            if row.removed:
                values.update(removed=False, state="active", failures=0, last_error=None)
            conn.execute(sa.update(portals).where(portals.c.name == name).values(**values))
        else:
            raise ConfigError(f"portal {name!r} exists; pass --replace to replace its config")
        if crypto.cipher() is not None:
            crypto.ensure_check(conn)

    def sync_dir(self, folder: str | Path) -> DirResult:
        """Import ``folder/*.toml`` (one portal per file, name = file stem): add new portals, update changed ones
        (config text or folder), leave the others. A bad file is one line in ``errors`` (file name and what to
        fix); the good files are imported all the same. A missing folder or a wrong key raises."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"portals folder {folder} does not exist or is not a folder")
        with self.engine.connect() as conn:
            known = {r.name: r for r in conn.execute(sa.select(portals.c.name, portals.c.config, portals.c.base_dir,
                                                                 portals.c.removed))}
        added, updated, same, errors = [], [], [], []
        for path in sorted(folder.glob("*.toml")):
            name = path.stem
            try:
                check_name(name)
                text = read_config_file(path)
                base = path.resolve().parent
                row = known.get(name)
                if row is not None and not row.removed:
                    if crypto.decrypt(row.config) == text and row.base_dir == str(base):
                        same.append(name)
                        continue
                    self.add(name, text, replace=True, base_dir=base, origin=path)
                    updated.append(name)
                else:
                    self.add(name, text, base_dir=base, origin=path)
                    added.append(name)
            except crypto.SecretKeyError:
                raise
            except ConfigError as exc:
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                message = " ".join(lines[:1] + ["; ".join(lines[1:])]) if len(lines) > 1 else "".join(lines)
                errors.append(_one_line(f"{path.name}: {message}") or path.name)
        return DirResult(tuple(added), tuple(updated), tuple(same), tuple(errors))

    def get(self, name: str) -> Portal:
        with self.engine.connect() as conn:
            return _portal(self._row(conn, name))

    def list(self, *, include_removed: bool = False) -> list[Portal]:
        query = sa.select(portals).order_by(portals.c.name)
        if not include_removed:
            query = query.where(portals.c.removed == sa.false())
        with self.engine.connect() as conn:
            return [_portal(r) for r in conn.execute(query)]

    def config_text(self, name: str) -> str:
        """The portal's TOML as added (decrypted: it holds secrets; never print it whole)."""
        with self.engine.connect() as conn:
            row = self._row(conn, name)
        return crypto.decrypt(row.config)  # type: ignore[return-value]

    def load(self, name: str) -> LoadedConfig:
        """The portal's config, ready for ``pipeline.sync``: ``[crm] name`` is the portal's name and
        ``[state] url`` the registry's database."""
        with self.engine.connect() as conn:
            row = self._row(conn, name)
        text = crypto.decrypt(row.config)
        loaded = load_config_text(text, f"portal {name}", base=Path(row.base_dir) if row.base_dir else None,  # type: ignore[arg-type]
                                  environment=False)
        from connector import logs

        logs.register_secrets(logs.secrets_of(loaded.settings))
        return self._as_portal(loaded, name)

    def set_state(self, name: str, state: str, *, error: str | BaseException | None = None) -> Portal:
        if state not in PORTAL_STATES:
            raise ConfigError(f"portal state {state!r} is not one of: {', '.join(PORTAL_STATES)}")
        values: dict[str, Any] = {"state": state, "updated_at": now()}
        if state == "active":
            values.update(failures=0)
        if error is not None:
            values["last_error"] = _one_line(error)
        with self.engine.begin() as conn:
            write_lock(conn)
            self._row(conn, name, lock=True)
            conn.execute(sa.update(portals).where(portals.c.name == name).values(**values))
        return self.get(name)

    def record_result(self, name: str, *, ok: bool, error: str | BaseException | None = None,
                      failing_after: int = 5) -> Portal:
        """Book a finished sync: success clears the failure count (a failing portal is active again); a
        failure counts, and the ``failing_after``-th in a row makes an active portal failing. Paused and
        uninstalled portals keep their state."""
        stamp = now()
        with self.engine.begin() as conn:
            write_lock(conn)
            row = self._row(conn, name, lock=True)
            if ok:
                values: dict[str, Any] = {"failures": 0, "last_error": None,
                                          "state": "active" if row.state == "failing" else row.state}
            else:
                failures = (row.failures or 0) + 1
                state = "failing" if row.state == "active" and failures >= failing_after else row.state
                values = {"failures": failures, "last_error": _one_line(error or "sync failed"), "state": state}
            conn.execute(sa.update(portals).where(portals.c.name == name)
                         .values(**values, last_run_at=stamp, updated_at=stamp))
        return self.get(name)

    def set_next_run(self, name: str, when: datetime | None) -> None:
        """When the portal is due next (a naive datetime is taken as UTC)."""
        when = _aware(when)
        with self.engine.begin() as conn:
            self._row(conn, name)
            conn.execute(sa.update(portals).where(portals.c.name == name).values(next_run_at=when))

    def purge_uninstalled(self, before: datetime) -> list[str]:
        """Purge every portal whose CRM app was uninstalled (state ``uninstalled``, not ``remove``d by hand)
        before ``before``: connector/apps keeps an uninstalled portal's data for a retention, then this."""
        with self.engine.connect() as conn:
            names = [r.name for r in conn.execute(sa.select(portals.c.name, portals.c.updated_at).where(
                portals.c.state == "uninstalled", portals.c.removed == sa.false())) if _aware(r.updated_at) < before]
        for name in names:
            self.remove(name, purge=True)
        return names

    def remove(self, name: str, *, purge: bool = False) -> None:
        """Hide the portal (state uninstalled; its data stays, ``add`` brings it back); ``purge``: delete the
        portal and every row of it in every table of the store."""
        folder = self._columnar_folder(name) if purge else None  # its files hold the same personal data
        with self.engine.begin() as conn:
            write_lock(conn)
            self._row(conn, name, removed_ok=purge, lock=True)
            if not purge:
                conn.execute(sa.update(portals).where(portals.c.name == name)
                             .values(removed=True, state="uninstalled", next_run_at=None, updated_at=now()))
                return
            tables = portal_tables(conn)
            for table in tables:
                conn.execute(sa.delete(table).where(portal_filter(table, name)))
            # the columnar triggers (revision 0006) mark mirror_state again while customers and deals go
            for table in tables:
                if table.name == "mirror_state":
                    conn.execute(sa.delete(table).where(table.c.portal == name))
            conn.execute(sa.delete(portals).where(portals.c.name == name))
        self._purge_columnar(name, folder)

    def _columnar_folder(self, name: str) -> Path | None:
        """Where the portal's columnar copy of the mirror lives (connector.store.columnar), if it can be told."""
        from connector.store.columnar import ColumnarMirror, default_folder

        try:
            state = self.load(name).settings.state
        except Exception:  # noqa: BLE001 - an undecryptable or broken config: the default folder then
            state = None
        if state is not None and not state.columnar:
            return None
        base = Path(state.columnar_dir) if state is not None and state.columnar_dir else default_folder(self.engine.url)
        return ColumnarMirror(self.engine, name, base, lambda *_: None).folder  # type: ignore[arg-type]

    @staticmethod
    def _purge_columnar(name: str, folder: Path | None) -> None:
        import shutil

        if folder is not None and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class DirResult:
    """What :meth:`Registry.sync_dir` did: portal names, and one line per bad file."""

    added: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]
    errors: tuple[str, ...]


def read_config_file(path: Path) -> str:
    """A portal's TOML file as text; ConfigError saying what is wrong with the file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder; name the portal's TOML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def portal_tables(conn: Connection) -> list[sa.Table]:
    """Every table of the store keyed by the portal (its name ``portal`` or its key ``portal_id``) that exists in
    this database (children first). ``portal_keys`` is not one: a portal's key is never deleted or reused."""
    import connector.dashboard.schema  # noqa: F401 - registers the dashboard's tables on the metadata

    present = set(sa.inspect(conn).get_table_names())
    tables = [t for t in reversed(metadata.sorted_tables)
              if ("portal" in t.c or "portal_id" in t.c) and t.name in present]
    # mirror_state last: deleting the mirror's rows sets its flag again (connector.store.columnar's triggers)
    return sorted(tables, key=lambda t: t.name == "mirror_state")


def portal_filter(table: sa.Table, name: str) -> sa.ColumnElement[bool]:
    """The portal's rows of a table of :func:`portal_tables` (by name, or by key through ``portal_keys``)."""
    if "portal_id" in table.c:
        return table.c.portal_id.in_(sa.select(portal_keys.c.id).where(portal_keys.c.name == name))
    return table.c.portal == name


def vacuum(engine: Engine) -> None:
    """SQLite: rewrite the file so no free page keeps a secret as it was before encryption (PostgreSQL's
    autovacuum reclaims old row versions on its own)."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("VACUUM")
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def reencrypt(conn: Connection, *, decrypt_with: Any, encrypt_with: Any) -> int:
    """Decrypt every stored secret (plain ones pass) and encrypt it with ``encrypt_with``; write the check
    value for that key. Returns how many values were written. Runs in the caller's transaction."""
    count = 0
    for row in conn.execute(sa.select(portals.c.name, portals.c.config)).all():
        text = crypto.decrypt(row.config, decrypt_with)
        conn.execute(sa.update(portals).where(portals.c.name == row.name)
                     .values(config=crypto.encrypt(text, encrypt_with)))
        count += 1
    for row in conn.execute(sa.select(oauth_tokens.c.portal, oauth_tokens.c.access_token,
                                      oauth_tokens.c.refresh_token)).all():
        values = {c: crypto.encrypt(crypto.decrypt(getattr(row, c), decrypt_with), encrypt_with)
                  for c in ("access_token", "refresh_token")}
        conn.execute(sa.update(oauth_tokens).where(oauth_tokens.c.portal == row.portal).values(**values))
        count += 1
    from connector.apps.b24_credentials import reencrypt_pairs  # pairs of `lifecycle apps bitrix24 add-credentials`

    count += reencrypt_pairs(conn, decrypt_with=decrypt_with, encrypt_with=encrypt_with)
    crypto.write_check(conn, encrypt_with)
    return count

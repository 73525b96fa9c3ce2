"""``lifecycle portals import-state``: move a single-portal deployment's state into the registry's database.

The source is the store named by the config file's ``[state] url`` (the SQLite file of a single-portal
deployment, or any store), holding the portal under its ``[crm] name``. Every table keyed by ``portal`` is
copied under the new name (its rows keyed by ``portal_id`` under the target's key for it; segment ids are
numbered within the portal, so they are copied as they are), in one transaction of the target (all or nothing): the mirror, segments,
membership and its history, the action ledger, runs, cursors, OAuth tokens (re-encrypted with the
registry's key), audiences, model fits, the dashboard's history. Run ids are renumbered (the registry
holds other portals' runs) and every column that points at a run follows. The sync lock is not copied.
The source is only read (and upgraded to this program's schema, as any command would).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from connector import crypto
from connector.config import ConfigError, load_config
from connector.registry import Registry, check_name, portal_filter, portal_tables, read_config_file
from connector.store.base import CHUNK, portal_id_in, write_lock
from connector.store.schema import oauth_tokens, runs

RUN_REFS = ("entered_run", "frozen_run", "planned_run", "run_id")  # columns holding a runs.id
NOT_COPIED = {"locks", "mirror_state"}  # mirror_state: set by the mirror's own triggers as its rows are copied


def _same_database(a: str, b: str) -> bool:
    ua, ub = sa.make_url(a), sa.make_url(b)
    if ua.get_backend_name() == ub.get_backend_name() == "sqlite":
        return Path(ua.database or "").resolve() == Path(ub.database or "").resolve()
    return ua.render_as_string(hide_password=True) == ub.render_as_string(hide_password=True)


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def import_state(registry: Registry, name: str, config_path: Path) -> dict[str, int]:
    """Register ``name`` from ``config_path`` and copy its store's rows; returns rows copied per table."""
    import time

    from connector.store import StateStore

    check_name(name)
    source = load_config(config_path)  # as the single-portal deployment read it (environment included)
    text = read_config_file(config_path)
    try:
        loaded = registry.validate(name, text, base_dir=config_path.resolve().parent, origin=config_path)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (a registry portal reads no LIFECYCLE_* variables: put every setting, "
                          "secrets included, into the file)") from None
    if _same_database(source.state_url, registry.url):
        raise ConfigError(f"{config_path}: [state] url is the registry's own database; import-state copies from a "
                          "single-portal store into another database")
    old = source.crm.name
    src = StateStore.open(source.state_url, old)
    try:
        lock = src.lock_info()
        if lock and lock.get("expires_at", 0) > time.time():
            raise ConfigError(f"a sync of {old!r} holds the source store's lock; stop that deployment first")
        with src.engine.connect() as sconn, registry.engine.begin() as tconn:
            write_lock(tconn)
            present = set(sa.inspect(sconn).get_table_names())
            tables = [t for t in portal_tables(tconn) if t.name in present and t.name not in NOT_COPIED]
            for t in tables:
                if tconn.execute(sa.select(sa.func.count()).select_from(t).where(portal_filter(t, name))).scalar_one():
                    raise ConfigError(f"portal {name!r} already has data in the registry ({t.name}); import into a new "
                                      f"name, or delete it first with `lifecycle portals remove {name} --purge`")
            registry.put(tconn, name, text, loaded, replace=True, base_dir=config_path.resolve().parent)
            new_key = portal_id_in(tconn, name)
            run_map = _copy_runs(sconn, tconn, old, name) if runs in tables else {}
            counts = {"runs": len(run_map)} if runs in tables else {}
            for t in tables:
                if t is runs:
                    continue
                counts[t.name] = _copy(sconn, tconn, t, old, (name, new_key), run_map)
            for t in tables:  # nothing lost: the target holds as many rows as the source
                want = sconn.execute(sa.select(sa.func.count()).select_from(t).where(portal_filter(t, old))).scalar_one()
                got = tconn.execute(sa.select(sa.func.count()).select_from(t).where(portal_filter(t, name))).scalar_one()
                if want != got:  # pragma: no cover - a bug, not an input error: roll everything back
                    raise RuntimeError(f"import-state: {t.name} has {got} rows, the source {want}; nothing was imported")
    finally:
        src.close()
    return counts


def _copy_runs(sconn: Any, tconn: Any, old: str, name: str) -> dict[int, int]:
    """Copy the runs in id order (new ids keep their order); the map old id -> new id."""
    mapping: dict[int, int] = {}
    for row in sconn.execute(sa.select(runs).where(runs.c.portal == old).order_by(runs.c.id)):
        values = {k: _aware(v) for k, v in row._mapping.items()}
        old_id = values.pop("id")
        values["portal"] = name
        mapping[old_id] = tconn.execute(sa.insert(runs).values(**values)).inserted_primary_key[0]
    return mapping


def _copy(sconn: Any, tconn: Any, table: sa.Table, old: str, new: tuple[str, int], run_map: dict[int, int]) -> int:
    drop_id = "id" in table.c and len(table.primary_key.columns) == 1  # an autoincrement row id: renumbered
    refs = [c for c in RUN_REFS if c in table.c]
    key = "portal_id" if "portal_id" in table.c else "portal"
    total = 0
    result = sconn.execution_options(yield_per=CHUNK).execute(sa.select(table).where(portal_filter(table, old)))
    for part in result.partitions():
        rows = []
        for row in part:
            values = {k: _aware(v) for k, v in row._mapping.items()}
            values[key] = new[1] if key == "portal_id" else new[0]
            if drop_id:
                values.pop("id")
            for c in refs:
                if values[c] is not None:
                    values[c] = run_map.get(values[c], values[c])
            if table is oauth_tokens:
                values["access_token"] = crypto.encrypt(crypto.decrypt(values["access_token"]))
                values["refresh_token"] = crypto.encrypt(crypto.decrypt(values["refresh_token"]))
            rows.append(values)
        if rows:
            tconn.execute(sa.insert(table), rows)
            total += len(rows)
    return total


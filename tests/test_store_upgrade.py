"""A state store written by the main before Alembic (tests/data/legacy_v5.sqlite, made by
scripts/make_legacy_store.py with commit 8576097's own code: an amoCRM OAuth sync with a call-task and a deal
campaign and a Yandex audience) upgrades in place through Alembic with nothing lost, and syncs on against
the same sandboxes without changing membership, the ledger or the tokens, and without sending anything twice."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.config import load_config
from connector.store import HEAD, SCHEMA_VERSION, NewerStoreError, StateStore
from connector.store import legacy
from tests.compact_rows import COMPACTED, old_shape_rows

DATA = Path(__file__).resolve().parent / "data"
LEGACY = DATA / "legacy_v5.sqlite"
INFO = json.loads((DATA / "legacy_v5.json").read_text(encoding="utf-8"))
AS_OF = date.fromisoformat(INFO["as_of"])
KEPT = ("runs", "customers", "deals", "segments", "membership", "membership_events", "cursors", "oauth_tokens",
        "actions", "audiences", "audience_members", "locks")
ORDER = {"runs": "id", "membership_events": "id"}


def rows(db: Path, table: str, columns: list[str] | None = None) -> list[tuple]:
    if table in COMPACTED:  # revision 0009 keys these by ids: compared in the shape they had
        engine = sa.create_engine(f"sqlite:///{db}", poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                return old_shape_rows(conn, table)
        finally:
            engine.dispose()
    con = sqlite3.connect(db)
    try:
        cols = columns or [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
        return sorted(con.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall(), key=repr)
    finally:
        con.close()


def columns(db: Path, table: str) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
    finally:
        con.close()


@pytest.fixture
def legacy_copy(tmp_path: Path) -> Path:
    db = tmp_path / "state.db"
    shutil.copyfile(LEGACY, db)
    return db


def test_the_fixture_is_a_legacy_store_with_every_kind_of_state():
    con = sqlite3.connect(LEGACY)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "alembic_version" not in tables and "audience_hashes" not in tables
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("5",)
        kinds = dict(con.execute("SELECT action, COUNT(*) FROM actions WHERE status = 'done' GROUP BY action").fetchall())
        assert kinds["call_task"] > 0 and kinds["deal"] > 0 and kinds["deal_task"] == kinds["deal"]
        assert con.execute("SELECT COUNT(*) FROM oauth_tokens").fetchone()[0] == 1
        assert con.execute("SELECT COUNT(*) FROM audience_members WHERE state = 'in'").fetchone()[0] > 100
        assert con.execute("SELECT COUNT(*) FROM membership").fetchone()[0] > 100
    finally:
        con.close()


def test_a_legacy_store_upgrades_through_alembic_with_nothing_lost(legacy_copy):
    before = {t: rows(legacy_copy, t) for t in KEPT}
    old_columns = {t: None if t in COMPACTED else columns(legacy_copy, t) for t in KEPT}
    store = StateStore.open(f"sqlite:///{legacy_copy}", "default")
    store.close()
    for table in KEPT:  # every row as it was (columns added by the upgrade are extra and empty)
        assert rows(legacy_copy, table, old_columns[table]) == before[table], table
    assert rows(legacy_copy, "actions", ["claimed_by"]) == [(None,)] * len(before["actions"])
    assert "locked_since" in columns(legacy_copy, "locks")
    assert rows(legacy_copy, "alembic_version") == [(HEAD,)]
    assert rows(legacy_copy, "meta") == [("schema_version", str(SCHEMA_VERSION))]
    # the cabinets' hashes derived from the customer rows, unconfirmed until the next run re-sends them
    wanted = {(p, a, k, h) for p, a, idents in rows(legacy_copy, "audience_members", ["portal", "audience", "identifiers"])
              for k, h in json.loads(idents).items() if h}
    hashes = rows(legacy_copy, "audience_hashes")
    assert {r[:4] for r in hashes} == wanted and {r[4] for r in hashes} == {"adding"}
    StateStore.open(f"sqlite:///{legacy_copy}", "default").close()  # at head: nothing to do, nothing changes
    assert rows(legacy_copy, "audience_hashes") == hashes


def _serve_like_the_fixture(acct, ads, store_db: Path) -> None:
    """The amoCRM app and the Yandex cabinet as the legacy sync left them (the CRM data is the same seed)."""
    from sandbox.amocrm.auth import ACCESS_LIFETIME, REFRESH_LIFETIME, Grant

    auth = acct.account.auth
    for name, value in INFO["amocrm"].items():
        setattr(auth, name, value)
    (access, refresh), = rows(store_db, "oauth_tokens", ["access_token", "refresh_token"])
    now = auth.clock.portal()
    auth.access[access] = Grant(now + ACCESS_LIFETIME, "oauth", None)
    auth.refresh[refresh] = Grant(now + REFRESH_LIFETIME, "oauth", None)
    yandex = ads.server.cabinets["/yandex"]
    yandex.token = INFO["yandex"]["token"]
    yandex.next_id = INFO["yandex"]["next_id"]
    for segment in INFO["yandex"]["segments"]:
        yandex.segments[segment["id"]] = {**segment, "members": {k: set(v) for k, v in segment["members"].items()}}


def _config(folder: Path, acct, ads, users: list[int]) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_legacy_store", DATA.parents[1] / "scripts" / "make_legacy_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    CONFIG = module.CONFIG
    path = folder / "lifecycle.toml"
    path.write_text(CONFIG.format(
        base_url=acct.info["base_url"], client_id=INFO["amocrm"]["client_id"], client_secret=INFO["amocrm"]["client_secret"],
        redirect_uri=INFO["amocrm"]["redirect_uri"], code="def50200" + "0" * 40, users=json.dumps(users),
        yandex_url=ads.info["yandex"]["base_url"], yandex_token=INFO["yandex"]["token"]), encoding="utf-8")
    return path


def _count_card_reads(monkeypatch) -> dict[str, int]:
    from connector.store.frames import Frames
    from connector.store.mirror import Mirror

    reads: dict[str, int] = {}
    for cls, name in ((Frames, "card_frame"), (Frames, "customers_frame"), (Mirror, "customer_cards")):
        original = getattr(cls, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads[_name] = reads.get(_name, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, counted)
    return reads


def test_an_upgraded_store_syncs_on_without_changing_membership_ledger_or_tokens(legacy_copy, monkeypatch):
    from connector.campaigns import marker
    from connector.pipeline import sync
    from sandbox.ads import running_ads
    from sandbox.amocrm import running_account

    membership_before = rows(legacy_copy, "membership")
    ledger_before = rows(legacy_copy, "actions", columns(legacy_copy, "actions"))
    tokens_before = rows(legacy_copy, "oauth_tokens")
    monkeypatch.chdir(legacy_copy.parent)
    seed, generate = INFO["seed"], tuple(INFO["generate"])
    with running_account(generate=generate, seed=seed, today=AS_OF) as acct, running_ads(cabinets=["yandex"]) as ads:
        _serve_like_the_fixture(acct, ads, legacy_copy)
        ads.advance(3600)  # Yandex has long finished processing the segment the legacy sync uploaded
        users = sorted(int(u["id"]) for u in acct.state()["users"])[:2]
        config = load_config(_config(legacy_copy.parent, acct, ads, users))
        reads = _count_card_reads(monkeypatch)
        result = sync(config, as_of=AS_OF)
        # one read of the customers' cards, shared by features, planning, tags and the audience
        assert reads == {"card_frame": 1}, reads
        summary = result.summary()
        assert result.entered.height == 0 and result.left.height == 0, summary  # the same CRM: nobody moved
        assert (summary["actions_planned"], summary["actions_created"], summary["actions_recovered"]) == (0, 0, 0)
        state = acct.state()
        sent = [t for t in state["tasks"] if "[lc" in str(t.get("text") or "")]
        sent += [lead for lead in state["leads"] if "[lc" in str(lead.get("name") or "")]
        assert sent == []  # nothing the ledger holds as done went to the CRM again
        assert acct.account.auth.refreshes == 0  # the stored OAuth pair went on working as it was
        (audience,) = summary["audiences"]
        assert audience["message"] is None and not audience["created"], audience
        segments = ads.server.cabinets["/yandex"].segments
        assert len(segments) == len(INFO["yandex"]["segments"]) == 1  # taken up again, not created twice
    assert rows(legacy_copy, "membership") == membership_before
    assert rows(legacy_copy, "actions", columns(legacy_copy, "actions")[:-1]) == [r for r in ledger_before]
    assert rows(legacy_copy, "oauth_tokens") == tokens_before
    store = StateStore.open(f"sqlite:///{legacy_copy}", "default")
    try:
        by_key = {r.key: r for r in store.ledger()}
        assert {r.status for r in by_key.values()} == {"done"} and len(by_key) == len(ledger_before)
        assert all(marker(k).startswith("lc") for k in by_key)
        hashes = store.audience_hashes("yandex:status.prospect:Prospects")
        assert hashes and set(hashes.values()) == {"in"}  # re-sent once and confirmed
        members = set().union(*(set(v) for v in segments[next(iter(segments))]["members"].values()))
        assert {h for _, h in hashes} == members
    finally:
        store.close()


def test_a_store_newer_than_this_program_is_refused_with_a_clear_message(legacy_copy):
    url = f"sqlite:///{legacy_copy}"
    StateStore.open(url, "default").close()
    con = sqlite3.connect(legacy_copy)
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    with pytest.raises(NewerStoreError, match="revision 9999, unknown to this program.*upgrade crm-lifecycle"):
        StateStore.open(url, "default")
    con = sqlite3.connect(legacy_copy)
    con.execute(f"UPDATE alembic_version SET version_num = '{HEAD}'")
    con.execute(f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}'")
    con.commit()
    con.close()
    with pytest.raises(NewerStoreError, match=f"version {SCHEMA_VERSION + 1}, newer than this program"):
        StateStore.open(url, "default")


def test_the_previous_main_refuses_an_upgraded_store(legacy_copy):
    """meta.schema_version is written on: code from before Alembic (version 5) stops with its own message."""
    StateStore.open(f"sqlite:///{legacy_copy}", "default").close()
    assert rows(legacy_copy, "meta") == [("schema_version", str(SCHEMA_VERSION))]
    assert SCHEMA_VERSION > len(legacy.STEPS) - 1 == 5


def test_a_legacy_store_on_postgresql_upgrades_with_nothing_lost(postgres_url):
    """The legacy schema of version 5 built by the legacy steps on PostgreSQL, filled with the fixture's
    rows, then opened: every row kept, the hashes derived, the revision at head."""
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    source = sa.create_engine(f"sqlite:///{LEGACY}", poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for step in legacy.STEPS[:5]:
                step(conn)
            conn.exec_driver_sql("ALTER TABLE locks DROP COLUMN locked_since")  # the shape version 5 left
            conn.exec_driver_sql("ALTER TABLE actions DROP COLUMN claimed_by")
            reflected = sa.MetaData()
            reflected.reflect(conn)
            with source.connect() as src:
                for table in ("meta", *KEPT):
                    data = [dict(r._mapping) for r in src.execute(sa.select(reflected.tables[table]))]
                    if data:
                        conn.execute(sa.insert(reflected.tables[table]), data)
            before = {t: old_shape_rows(conn, t) if t in COMPACTED else
                      sorted(map(tuple, conn.execute(sa.select(reflected.tables[t])).all()), key=repr) for t in KEPT}
        StateStore.open(postgres_url, "default").close()
        with engine.connect() as conn:
            for table in KEPT:
                if table in COMPACTED:  # revision 0009 keys these by ids: compared in the shape they had
                    assert old_shape_rows(conn, table) == before[table], table
                    continue
                cols = [c for c in reflected.tables[table].c]
                after = sorted(map(tuple, conn.execute(sa.select(*cols)).all()), key=repr)
                assert after == before[table], table
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [(HEAD,)]
            hashes = conn.exec_driver_sql("SELECT state, COUNT(*) FROM audience_hashes GROUP BY state").all()
            members = conn.exec_driver_sql("SELECT identifiers FROM audience_members").all()
        assert dict(hashes) == {"adding": len({h for (i,) in members for h in json.loads(i).items()})}
    finally:
        engine.dispose()
        source.dispose()


def test_processes_opening_a_legacy_store_together_upgrade_it_once(legacy_copy):
    import subprocess
    import sys
    import time

    script = (
        "import sys, time, pathlib\n"
        "from connector.store import StateStore\n"
        "go = pathlib.Path(sys.argv[2])\n"
        "while not go.exists(): time.sleep(0.001)\n"
        "StateStore.open(sys.argv[1], 'default').close()\n"
    )
    go = legacy_copy.parent / "go"
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", script, f"sqlite:///{legacy_copy}", str(go)], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(1.5)  # the imports (a slower start only makes the opens less simultaneous, never wrong)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-1500:] for _, err in outs]
    assert rows(legacy_copy, "alembic_version") == [(HEAD,)]
    members = rows(legacy_copy, "audience_members", ["identifiers"])
    assert len(rows(legacy_copy, "audience_hashes")) == len({h for (i,) in members for h in json.loads(i).items()})


def test_a_store_of_version_7_is_stamped_without_redoing_its_hashes(tmp_path):
    """The main just before Alembic (version 7) already keeps per-hash states: they stay as they are."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore.open(url, "p")
    store.set_audience_members("yandex:s:A", {1: ({"email": "e1" * 32}, "in")})
    store.set_audience_hashes("yandex:s:A", [("email", "e1" * 32)], "in")
    with store.engine.begin() as conn:  # what that main left: no Alembic table, version 7
        conn.exec_driver_sql("DROP TABLE alembic_version")
        conn.exec_driver_sql("UPDATE meta SET value = '7'")
    store.close()
    store = StateStore.open(url, "p")
    try:
        assert store.audience_hashes("yandex:s:A") == {("email", "e1" * 32): "in"}
    finally:
        store.close()
    assert rows(tmp_path / "state.db", "alembic_version") == [(HEAD,)]

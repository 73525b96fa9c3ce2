"""Secrets at rest (connector/crypto.py): with a key, the registry's configs (webhook URLs, OAuth client
secrets, cabinet tokens) and every portal's OAuth tokens are stored encrypted, so a dump of the database
without the key reveals none of them; a missing or wrong key is one clear error at start, never a silent
token re-issue; `lifecycle secrets rotate` re-encrypts everything with a new key. Syncs run over HTTP against
the Bitrix24 sandbox (two portals of one server: OAuth and webhook)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from connector import crypto
from connector.pipeline import open_store, sync
from connector.registry import Registry
from connector.store import StateStore
from sandbox.bitrix24 import running_portals
from tests.conftest import run_cli
from tests.registry_fixtures import _no_process_key, state_url  # noqa: F401 - fixtures

AMO_TOKEN = "amo-long-lived-token-5f0c9e2b7d1a"
YANDEX_TOKEN = "y0_AgAAAABcabinet-token-77aa"


@pytest.fixture
def sandbox():
    with running_portals(2, generate=(30, 90), time_scale=50) as handle:
        yield handle


def oauth_config(portal) -> str:
    info = portal.info
    return f"""[crm]
kind = "bitrix24"
client_endpoint = "{info["client_endpoint"]}"
client_id = "{info["client_id"]}"
client_secret = "{info["client_secret"]}"
refresh_token = "{info["refresh_token"]}"
oauth_token_url = "{info["oauth_token_url"]}"
requests_per_second = 500
reconcile_hours = 0
overlap_minutes = 0
[audiences]
yandex_token = "{YANDEX_TOKEN}"
"""


def webhook_config(portal) -> str:
    return f'[crm]\nkind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n'


AMO_CONFIG = f'[crm]\nkind = "amocrm"\nbase_url = "https://shop.amocrm.ru"\naccess_token = "{AMO_TOKEN}"\n'


def dump(url: str) -> str:
    """Everything a database dump would show: every row of every table, and for SQLite the raw file bytes."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    parts = []
    try:
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                parts += [repr(tuple(row)) for row in conn.exec_driver_sql(f'SELECT * FROM "{table}"')]
    finally:
        engine.dispose()
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        for suffix in ("", "-wal", "-shm", "-journal"):
            file = path.with_name(path.name + suffix)
            if file.exists():
                parts.append(file.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def secrets_of(sandbox, url: str, key: str) -> list[str]:
    """The plain secrets the registry holds: config values and the OAuth pair the sync stored."""
    first, second = sandbox[0], sandbox[1]
    crypto.configure(key)
    store = StateStore.open(url, "oauth")
    try:
        token = store.oauth_token()
    finally:
        store.close()
    assert token is not None and token["refresh_token"] != first.info["refresh_token"]  # rotated by the sync
    webhook_code = second.webhook_url.rstrip("/").rsplit("/", 1)[-1]
    return [second.webhook_url, webhook_code, first.info["client_secret"], first.info["refresh_token"], AMO_TOKEN,
            YANDEX_TOKEN, token["access_token"], token["refresh_token"]]


def registry_with_secrets(sandbox, url: str, key: str | None) -> list[str]:
    registry = Registry.open(url, key=key)
    try:
        registry.add("oauth", oauth_config(sandbox[0]))
        registry.add("hook", webhook_config(sandbox[1]))
        registry.add("amo", AMO_CONFIG)
        for name in ("oauth", "hook"):
            assert sync(registry.load(name)).summary()["customers"] == 30
    finally:
        registry.close()
    return secrets_of(sandbox, url, key) if key else []


def test_a_dump_without_the_key_reveals_no_secret(sandbox, state_url, tmp_path):
    key = crypto.new_key()
    secrets = registry_with_secrets(sandbox, state_url, key)
    text = dump(state_url)
    assert "fernet:" in text  # encrypted values are there...
    for secret in secrets:
        assert secret not in text  # ...and no plain secret
    # With the key every secret is readable again (the next sync uses the stored, rotated tokens)
    crypto.configure(None)
    registry = Registry.open(state_url, key=key)
    try:
        assert AMO_TOKEN in registry.config_text("amo")
        assert registry.load("hook").crm.webhook_url.get_secret_value() == sandbox[1].webhook_url
        refreshes = sandbox[0].counters().get("oauth_refreshes", 0)
        assert sync(registry.load("oauth")).summary()["customers"] == 30
        assert sandbox[0].counters().get("oauth_refreshes", 0) <= refreshes + 1  # no re-issue from the first token
    finally:
        registry.close()


def test_a_missing_or_wrong_key_is_one_clear_error_at_start(sandbox, state_url, tmp_path):
    key = crypto.new_key()
    registry_with_secrets(sandbox, state_url, key)
    crypto.configure(None)
    with pytest.raises(crypto.SecretKeyError, match="encrypted secrets but no key is set: set LIFECYCLE_SECRET_KEY"):
        Registry.open(state_url)
    with pytest.raises(crypto.SecretKeyError, match="does not decrypt the secrets"):
        Registry.open(state_url, key=crypto.new_key())
    crypto.configure(None)
    with pytest.raises(crypto.SecretKeyError, match="no key is set"):
        StateStore.open(state_url, "oauth")  # a single portal's process checks it too, before any token is used
    with pytest.raises(crypto.SecretKeyError, match="not a Fernet key"):
        Registry.open(state_url, key="not-a-key")
    refreshes = sandbox[0].counters().get("oauth_refreshes", 0)
    for env in ({}, {crypto.KEY_VAR: crypto.new_key()}):
        result = run_cli(["portals", "list", "--state-url", state_url], env=env)
        assert result.returncode == 2, result
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
        assert "LIFECYCLE_SECRET_KEY" in result.stderr and "Traceback" not in result.stderr
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    result = run_cli(["portals", "list", "--state-url", state_url, "--format", "json"],
                     env={crypto.KEY_VAR + "_FILE": str(key_file)})
    assert result.returncode == 0 and '"name": "oauth"' in result.stdout
    assert sandbox[0].counters().get("oauth_refreshes", 0) == refreshes  # nothing was re-issued


def test_rotate_re_encrypts_everything_with_the_new_key(sandbox, state_url, tmp_path):
    old = crypto.new_key()
    secrets = registry_with_secrets(sandbox, state_url, old)
    crypto.configure(None)
    new = crypto.new_key()
    (tmp_path / "new.key").write_text(new + "\n")
    before = dump(state_url)
    result = run_cli(["secrets", "rotate", "--new-key-file", str(tmp_path / "new.key"), "--state-url", state_url],
                     env={crypto.KEY_VAR: old})
    assert result.returncode == 0, result
    assert "re-encrypted 4 secrets" in result.stdout  # 3 configs and the OAuth portal's token pair
    after = dump(state_url)
    assert after != before
    for secret in secrets:
        assert secret not in after
    with pytest.raises(crypto.SecretKeyError, match="does not decrypt"):
        Registry.open(state_url, key=old)
    registry = Registry.open(state_url, key=new)
    try:
        assert AMO_TOKEN in registry.config_text("amo")
        assert sync(registry.load("oauth")).summary()["customers"] == 30  # the stored tokens decrypt and work
    finally:
        registry.close()
    # "NEW,OLD" opens the store too (every process can be switched before the rotation)
    registry = Registry.open(state_url, key=f"{new},{old}")
    registry.close()


def test_a_plain_registry_is_encrypted_when_a_key_arrives(sandbox, state_url):
    registry_with_secrets(sandbox, state_url, None)
    assert AMO_TOKEN in dump(state_url)  # no key: plain, as the CLI warns
    crypto.configure(None)
    result = run_cli(["secrets", "rotate", "--new-key-file", "/nonexistent", "--state-url", state_url])
    assert result.returncode == 2 and "not found" in result.stderr
    key = crypto.new_key()
    Registry.open(state_url, key=key).close()
    secrets = secrets_of(sandbox, state_url, key)
    text = dump(state_url)
    for secret in secrets:
        assert secret not in text


def test_single_portal_tokens_are_encrypted_when_a_key_is_set(sandbox, tmp_path, monkeypatch):
    from connector.config import load_config

    path = tmp_path / "lifecycle.toml"
    path.write_text(oauth_config(sandbox[0]) + '[state]\nurl = "sqlite:///state.db"\n', encoding="utf-8")
    key = crypto.new_key()
    monkeypatch.setenv(crypto.KEY_VAR, key)
    config = load_config(path)
    sync(config)
    store = open_store(config)
    token = store.oauth_token()
    store.close()
    text = dump(config.state_url)
    assert token["refresh_token"] not in text and token["access_token"] not in text
    monkeypatch.delenv(crypto.KEY_VAR)
    result = run_cli(["sync", "--config", str(path)])
    assert result.returncode == 2 and "no key is set" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.slow  # starts 3 Python processes (about 20 s on a loaded 2-core machine)
def test_processes_starting_together_seal_a_plain_store_once(state_url, tmp_path):
    """A key arrives for a store written without one: several processes open it at once; each succeeds and
    every secret ends encrypted with that key."""
    import subprocess
    import sys

    registry = Registry.open(state_url)
    for n in range(5):
        registry.add(f"p{n}", AMO_CONFIG)
    registry.close()
    key = crypto.new_key()
    code = "import sys; from connector.registry import Registry; Registry.open(sys.argv[1], key=sys.argv[2]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code, state_url, key], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert AMO_TOKEN not in dump(state_url)
    registry = Registry.open(state_url, key=key)
    try:
        assert all(AMO_TOKEN in registry.config_text(f"p{n}") for n in range(5))
    finally:
        registry.close()

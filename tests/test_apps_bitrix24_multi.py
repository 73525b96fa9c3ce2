"""Several Bitrix24 applications served by one deployment (a local application per client portal, each with
its own client_id/client_secret): LIFECYCLE_BITRIX24_APPS_PATH, identification of the application by the
OAuth server at installation, and each portal's token refresh with its own pair, over loopback against the
sandbox's shared OAuth server."""

from __future__ import annotations

import json
import logging
import re
import secrets as pysecrets

import pytest
import requests
import sqlalchemy as sa

from connector.apps.bitrix24_app import APP_EVENTS, name_of
from connector.apps.b24_credentials import Bitrix24Credentials, ClientPair, parse_apps
from connector.config import ConfigError
from sandbox.bitrix24 import running_portals
from tests.apps_stack import app_env, free_port, snapshot, sync_runs, wait_for, web_service, worker

DECOYS = 20  # pairs of other portals' applications, listed before the two that matter


def _pair(tag: str) -> ClientPair:
    return ClientPair(f"local.{pysecrets.token_hex(7)[:13]}.{tag:0>8}",
                      "".join(pysecrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789")
                              for _ in range(50)))


def _write(path, pairs: list[ClientPair]) -> None:
    body = "".join(f'[[app]]\nclient_id = "{p.client_id}"\nclient_secret = "{p.client_secret}"\nnote = "portal {i}"\n\n'
                   for i, p in enumerate(pairs))
    path.write_text(body, encoding="utf-8")


def _tries(caplog, name: str) -> int:
    """How many configured pairs the last identification of ``name`` tried (from its log line)."""
    found = [int(m.group(1)) for r in caplog.records
             if (m := re.search(rf"portal {name}: .* \((\d+) of \d+ configured tried\)", r.getMessage()))]
    assert found, f"no identification logged for {name}"
    return found[-1]


def _app(portal, client_id: str) -> dict:
    return next(a for a in portal.control("GET", "apps")["apps"] if a["client_id"] == client_id)


def _bound(portal, client_id: str) -> bool:
    app = _app(portal, client_id)
    return len(app["events"]) == len(APP_EVENTS) and len(app["placements"]) == 1 and bool(app["options"])


def _ok_runs(engine, name: str) -> int:
    return sum(1 for status, _ in sync_runs(engine, name) if status == "ok")


def _stored_tokens(engine, name: str) -> tuple:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text("SELECT access_token, refresh_token FROM oauth_tokens WHERE portal = :p"),
                                  {"p": name}).one())


# -- the apps file -------------------------------------------------------------------------------------

def test_the_apps_file_toml_json_errors_and_reload(tmp_path, monkeypatch):
    a, b = _pair("1"), _pair("2")
    toml = tmp_path / "apps.toml"
    _write(toml, [a])
    creds = Bitrix24Credentials(ClientPair("app.single.1", "single-secret-xyz"), toml)
    assert [p.client_id for p in creds.pairs()] == ["app.single.1", a.client_id]
    assert creds.get(a.client_id) == a and creds.get("local.nobody.0") is None
    assert [p.client_id for p in creds.ordered([None, a.client_id])] == [a.client_id, "app.single.1"]
    assert a.client_secret not in repr(creds.pairs())

    # a pair added while the service runs is seen at the next installation, without a restart
    _write(toml, [a, b])
    assert [p.client_id for p in creds.pairs()][-1] == b.client_id
    # broken later: the last good list stays, the error is logged without a secret
    toml.write_text(toml.read_text() + f'[[app]]\nclient_secret = "{b.client_secret}"\n')
    assert [p.client_id for p in creds.pairs()] == ["app.single.1", a.client_id, b.client_id]

    as_json = tmp_path / "apps.json"
    as_json.write_text(json.dumps([{"client_id": a.client_id, "client_secret": a.client_secret},
                                   {"client_id": b.client_id, "client_secret": b.client_secret}]))
    assert Bitrix24Credentials(None, as_json).pairs() == [a, b]
    as_json.write_text(json.dumps({"app": [{"client_id": a.client_id, "client_secret": a.client_secret}]}))
    assert Bitrix24Credentials(None, as_json).pairs() == [a]

    bad = [('[[app]]\nclient_id = "x"\n', "entry 1 (x) has no client_secret"),
           (f'[[app]]\nclient_secret = "{a.client_secret}"\n', "entry 1 has no client_id"),
           (f'[[app]]\nclient_id = "x"\nclient_secret = "{a.client_secret}"\nsecret = "y"\n', "unknown key(s) secret"),
           (f'[[app]]\nclient_id = "x"\nclient_secret = "{a.client_secret}"\n[[app]]\nclient_id = "x"\n'
            f'client_secret = "{b.client_secret}"\n', "given twice with different secrets"),
           (f'app = "{a.client_secret}"\n', "write the applications as [[app]] tables"),
           (f'[[app]]\nclient_id = "x"\nclient_secret = "{a.client_secret}\n', "not valid TOML")]
    for text, message in bad:
        with pytest.raises(ConfigError) as caught:
            parse_apps(text, "apps.toml", as_json=False)
        assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1
        assert a.client_secret not in str(caught.value) and b.client_secret not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read it"):
        Bitrix24Credentials(None, tmp_path / "missing.toml")

    # the environment: the single pair keeps working, the file adds to it
    from connector.apps.settings import AppSettings

    monkeypatch.setenv("LIFECYCLE_BITRIX24_CLIENT_ID", "app.single.1")
    monkeypatch.setenv("LIFECYCLE_BITRIX24_CLIENT_SECRET", "single-secret-xyz")
    assert [p.client_id for p in AppSettings.from_env().b24_credentials().pairs()] == ["app.single.1"]
    monkeypatch.setenv("LIFECYCLE_BITRIX24_APPS_PATH", str(as_json))
    assert [p.client_id for p in AppSettings.from_env().b24_credentials().pairs()] == ["app.single.1", a.client_id]
    monkeypatch.setenv("LIFECYCLE_BITRIX24_APPS_PATH", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="LIFECYCLE_BITRIX24_APPS_PATH"):
        AppSettings.from_env()


# -- two portals, two local applications, one deployment ------------------------------------------------

@pytest.mark.slow
def test_two_local_apps_in_two_portals_from_one_deployment(postgres_url, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="lifecycle.apps.bitrix24")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    handler = base + "/apps/bitrix24/install"
    decoys = [_pair(str(100 + i)) for i in range(DECOYS)]
    a = _pair("1")  # portal 0's local application (its form's keys, added before installing)
    apps_file = tmp_path / "bitrix24-apps.toml"
    _write(apps_file, decoys + [a])
    with running_portals(3, generate=(5, 5), limits=False) as sandbox:
        p0, p1, p2 = sandbox[0], sandbox[1], sandbox[2]
        oauth = sandbox.base_url + "/oauth/token/"  # the shared OAuth server of every portal
        env = app_env(tmp_path, port, LIFECYCLE_BITRIX24_OAUTH_URL=oauth, LIFECYCLE_BITRIX24_JS_URL=p1.base_url +
                      "/_sandbox/apps/bx24.js", LIFECYCLE_BITRIX24_APPS_PATH=str(apps_file))
        single = env["LIFECYCLE_BITRIX24_CLIENT_SECRET"]  # the single pair stays configured (and is tried too)
        with web_service(postgres_url, env, port, monkeypatch) as service, worker(postgres_url, env, tmp_path):
            registry = service.workers.registry()
            engine = registry.engine
            n0, n1, n2 = (name_of(p.info["member_id"]) for p in (p0, p1, p2))

            # portal 0: an API-only local app (installation callback), its pair listed last of 22
            answer0 = p0.install_app(handler, scope="crm,placement,user_brief", client_id=a.client_id,
                                     client_secret=a.client_secret)
            assert answer0["delivery"]["status"] == 200, answer0["delivery"]
            assert _tries(caplog, n0) == DECOYS + 2  # the single pair, the decoys, then its own
            print(f"callback identified after {DECOYS + 2} pairs in {answer0['delivery']['elapsed']:.3f} s")
            assert registry.load(n0).crm.client_id == a.client_id

            # portal 1: a local app with an installation page, whose keys the form shows after saving: the
            # page opened before they are added is refused, nothing stored, no secret shown
            b_app = p1.install_app(handler, mode="wizard", send=False, scope="crm,placement,user_brief")
            b = ClientPair(b_app["client_id"], b_app["client_secret"])
            early = p1.open_placement(install=True, send=False, user_id=1, lang="en")
            refused = requests.post(early["url"], data=early["form"], timeout=30)
            assert refused.status_code == 403 and "LIFECYCLE_BITRIX24_APPS_PATH" in refused.text
            assert "installFinish" not in refused.text
            for secret in (early["form"]["REFRESH_ID"], early["form"]["AUTH_ID"], b.client_secret, a.client_secret, single):
                assert secret not in refused.text
            assert snapshot(engine, n1)["portal"] is None
            _write(apps_file, decoys + [a, b])  # the integrator adds the pair; no restart
            opened = p1.open_placement(install=True, user_id=1, lang="en")
            assert opened["status"] == 200 and "BX24.installFinish()" in opened["body"], opened["body"][:300]
            assert registry.load(n1).crm.client_id == b.client_id

            # each portal's config records its own pair (stored encrypted), each app bound in its portal
            with engine.connect() as conn:
                configs = dict(conn.exec_driver_sql("SELECT name, config FROM portals").all())
            assert set(configs) == {n0, n1} and all(v.startswith("fernet:") for v in configs.values())
            assert registry.load(n0).crm.client_secret.get_secret_value() == a.client_secret
            assert registry.load(n1).crm.client_secret.get_secret_value() == b.client_secret
            wait_for(lambda: _bound(p0, a.client_id) and _bound(p1, b.client_id), 30, "both apps' bindings")
            assert {e["handler"] for e in _app(p0, a.client_id)["events"]} == {f"{base}/apps/bitrix24/events/{n0}"}
            assert {e["handler"] for e in _app(p1, b.client_id)["events"]} == {f"{base}/apps/bitrix24/events/{n1}"}

            # the first sync of both on the worker; then their access tokens expire and each portal's tokens
            # are refreshed with its own pair (the shared OAuth server refuses the other pair's)
            wait_for(lambda: _ok_runs(engine, n0) >= 1 and _ok_runs(engine, n1) >= 1, 90, "both first syncs")
            wait_for(lambda: not _pending(engine), 60, "the queued syncs to finish")
            for portal, name in ((p0, n0), (p1, n1)):
                runs, refreshes, stored = _ok_runs(engine, name), portal.counters()["oauth_refreshes"], \
                    _stored_tokens(engine, name)
                assert portal.expire_tokens() >= 1
                service.workers.defer_sync(name, "test")
                wait_for(lambda: _ok_runs(engine, name) > runs, 90, f"the sync of {name} after its tokens expired")
                assert portal.counters()["oauth_refreshes"] > refreshes
                assert _stored_tokens(engine, name) != stored
            with requests.Session() as s:  # the other pair cannot renew a portal's stored token
                registry_tokens = _stored_refresh(registry, n1)
                wrong = s.get(oauth, params={"grant_type": "refresh_token", "client_id": a.client_id,
                                             "client_secret": a.client_secret, "refresh_token": registry_tokens},
                              timeout=10)
                assert "access_token" not in wrong.json()

            # a second installation callback of portal 0: its recorded pair is tried first, once
            again = p0.install_app(handler, app=a.client_id)
            assert again["delivery"]["status"] == 200 and _tries(caplog, n0) == 1

            # portal 2: an application nobody configured: refused, nothing stored, no secret in the answer
            before = snapshot(engine, n2)
            stranger = p2.install_app(handler, scope="crm,placement,user_brief")
            delivery = stranger["delivery"]
            assert delivery["status"] == 401 and len(delivery["response"].strip().splitlines()) == 1
            assert f"none of the {DECOYS + 3} configured" in delivery["response"]
            auth = delivery["form"]["auth"]
            for secret in (auth["refresh_token"], auth["access_token"], auth["application_token"],
                           stranger["client_secret"], a.client_secret, b.client_secret, single):
                assert secret not in delivery["response"]
            assert snapshot(engine, n2) == before and before["portal"] is None
            assert [p.name for p in registry.list()] == sorted([n0, n1])
            # its keys added through the CLI (stored in the registry, encrypted; the running service reads them
            # at the next installation), the callback sent again to the URL with the ?client_id= hint: one try
            c = ClientPair(stranger["client_id"], stranger["client_secret"])
            (tmp_path / "c.secret").write_text(c.client_secret)
            from tests.conftest import run_cli

            added = run_cli(["apps", "bitrix24", "add-credentials", "--client-id", c.client_id, "--client-secret-file",
                             str(tmp_path / "c.secret"), "--state-url", postgres_url])
            assert added.returncode == 0 and c.client_secret not in added.stdout + added.stderr, added.stderr
            hinted = p2.install_app(f"{handler}?client_id={c.client_id}", app=c.client_id)
            assert hinted["delivery"]["status"] == 200 and _tries(caplog, n2) == 1
            print(f"callback with the hint: {hinted['delivery']['elapsed']:.3f} s")
            assert registry.load(n2).crm.client_id == c.client_id
            wait_for(lambda: not _pending(engine), 60, "the queued syncs to finish")
    for record in caplog.records:  # no secret of any configured application reaches the log
        message = record.getMessage()
        assert not any(p.client_secret in message for p in decoys + [a, b])


def _pending(engine) -> bool:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')").scalar() > 0


def _stored_refresh(registry, name: str) -> str:
    from connector.store.tokens import Tokens

    return Tokens(registry.engine, name).oauth_token()["refresh_token"]


# -- fidelity: the OAuth server's answers to a wrong pair, as the official SDK reads them ------------------

def test_b24pysdk_reads_the_oauth_servers_refusals_of_a_wrong_pair(monkeypatch):
    """b24pysdk (nobody here wrote it) refreshes at its hard-coded oauth.bitrix24.tech through the sandbox
    (HTTPS_PROXY, the sandbox's CA): a client_id nobody has is its ``BitrixOauthWrongClient`` (HTTP 200
    ``wrong_client``), a wrong secret ``BitrixOAuthInvalidClient``, another application's valid pair
    ``BitrixOAuthInvalidGrant``; none of them spends the token, and the right pair renews it for the portal."""
    pytest.importorskip("b24pysdk")
    from b24pysdk import BitrixApp
    from b24pysdk.api.requesters import BitrixOAuthRequester
    from b24pysdk.errors.oauth import BitrixOAuthInvalidClient, BitrixOAuthInvalidGrant, BitrixOauthWrongClient
    from sandbox.bitrix24 import running_portal

    with running_portal(generate=(5, 5), tls=True) as portal:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", portal.ca_file)
        for name in ("HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(name, portal.info["https_proxy"])
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        first, second = (portal.install_app("https://127.0.0.1:9/install", mode="wizard", send=False, scope="crm")
                         for _ in range(2))
        frame = portal.open_placement(install=True, app=second["client_id"], send=False)
        refresh = frame["form"]["REFRESH_ID"]

        def renew(client_id: str, secret: str) -> dict:
            return BitrixOAuthRequester(BitrixApp(client_id=client_id, client_secret=secret),
                                        max_retries=1).refresh_oauth_token(refresh)

        refreshes = portal.counters()["oauth_refreshes"]
        with pytest.raises(BitrixOauthWrongClient):
            renew("local.000000000nobody.00000000", second["client_secret"])
        with pytest.raises(BitrixOAuthInvalidClient):
            renew(second["client_id"], first["client_secret"])
        with pytest.raises(BitrixOAuthInvalidGrant):
            renew(first["client_id"], first["client_secret"])
        assert portal.counters()["oauth_refreshes"] == refreshes
        fresh = renew(second["client_id"], second["client_secret"])
        assert fresh["member_id"] == portal.info["member_id"] and fresh["refresh_token"] != refresh
        with pytest.raises(BitrixOAuthInvalidGrant):  # spent by the renewal
            renew(second["client_id"], second["client_secret"])


# -- the CLI: pairs stored in the registry, encrypted ----------------------------------------------------

def test_the_cli_stores_pairs_encrypted_and_updates_installed_portals(tmp_path):
    from cryptography.fernet import Fernet

    from connector import crypto
    from connector.apps.b24_credentials import stored_pairs
    from connector.registry import Registry
    from tests.conftest import run_cli

    url = f"sqlite:///{tmp_path / 'state.db'}"
    key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    env = {"LIFECYCLE_SECRET_KEY": key, "LIFECYCLE_STATE_URL": url}
    a, b = _pair("1"), _pair("2")
    secret_file = tmp_path / "secret.txt"

    def add(pair: ClientPair, **extra: str):
        secret_file.write_text(pair.client_secret + "\n")
        return run_cli(["apps", "bitrix24", "add-credentials", "--client-id", pair.client_id, "--client-secret-file",
                        str(secret_file)], env={**env, **extra})

    no_key = add(a, LIFECYCLE_SECRET_KEY="")
    assert no_key.returncode == 2 and "LIFECYCLE_SECRET_KEY" in no_key.stderr
    for proc in (add(a), add(b)):
        assert proc.returncode == 0 and proc.stdout.strip().endswith("added"), proc.stderr
    assert add(a).stdout.strip() == f"{a.client_id}: replaced"
    bad = run_cli(["apps", "bitrix24", "add-credentials", "--client-id", "local app", "--client-secret-file",
                   str(secret_file)], env=env)
    assert bad.returncode == 2 and "--client-id" in bad.stderr
    secret_file.write_text("")
    assert run_cli(["apps", "bitrix24", "add-credentials", "--client-id", a.client_id, "--client-secret-file",
                    str(secret_file)], env=env).returncode == 2

    # a portal installed with pair a (as the app records it); a's key regenerated: the portal gets the new one
    reg = Registry.open(url, key=key)
    try:
        reg.add("b24-portal", '[crm]\nkind = "bitrix24"\nclient_endpoint = "https://shop.bitrix24.ru/rest/"\n'
                              f'client_id = "{a.client_id}"\nclient_secret = "{a.client_secret}"\n')
        with reg.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT key, value FROM meta WHERE key LIKE 'bitrix24_app:%'").all()
        assert sorted(k for k, _ in rows) == sorted(f"bitrix24_app:{p.client_id}" for p in (a, b))
        assert all(v.startswith("fernet:") and a.client_secret not in v for _, v in rows)
        assert sorted(stored_pairs(reg.engine), key=lambda p: p.client_id) == sorted([a, b], key=lambda p: p.client_id)
    finally:
        reg.close()
        crypto.configure(None)
    renewed = ClientPair(a.client_id, "new-" + a.client_secret[4:])
    proc = add(renewed)
    assert proc.returncode == 0 and "1 installed portal(s) now refresh with the new secret" in proc.stdout
    listed = run_cli(["apps", "bitrix24", "list-credentials"], env=env)
    assert listed.returncode == 0 and re.search(rf"{re.escape(a.client_id)}\s+1 portal\(s\)\s+b24-portal", listed.stdout)
    assert re.search(rf"{re.escape(b.client_id)}\s+0 portal\(s\)", listed.stdout)

    # `lifecycle secrets rotate` re-encrypts the stored pairs with the rest
    (tmp_path / "new.key").write_text(new_key)
    rotated = run_cli(["secrets", "rotate", "--new-key-file", str(tmp_path / "new.key")], env=env)
    assert rotated.returncode == 0, rotated.stderr
    reg = Registry.open(url, key=new_key)
    try:
        assert reg.load("b24-portal").crm.client_secret.get_secret_value() == renewed.client_secret
        assert {p.client_id: p.client_secret for p in stored_pairs(reg.engine)} == {
            a.client_id: renewed.client_secret, b.client_id: b.client_secret}
    finally:
        reg.close()
        crypto.configure(None)
    new_env = {**env, "LIFECYCLE_SECRET_KEY": new_key}
    removed = run_cli(["apps", "bitrix24", "remove-credentials", "--client-id", b.client_id], env=new_env)
    assert removed.returncode == 0 and removed.stdout.strip() == f"{b.client_id}: removed"
    assert run_cli(["apps", "bitrix24", "remove-credentials", "--client-id", b.client_id], env=new_env).returncode == 1
    for proc in (no_key, bad, proc, listed, rotated, removed):  # nothing printed repeats a secret
        for secret in (a.client_secret, b.client_secret, renewed.client_secret, key, new_key):
            assert secret not in proc.stdout + proc.stderr


def test_a_secret_changed_in_the_apps_file_reaches_installed_portals_at_the_service_start(
        postgres_url, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    handler = f"http://127.0.0.1:{port}/apps/bitrix24/install"
    a, b = _pair("1"), _pair("2")
    apps_file = tmp_path / "bitrix24-apps.toml"
    _write(apps_file, [a, b])
    with running_portals(2, generate=(5, 5), limits=False) as sandbox:
        p0, p1 = sandbox[0], sandbox[1]
        env = app_env(tmp_path, port, LIFECYCLE_BITRIX24_OAUTH_URL=sandbox.base_url + "/oauth/token/",
                      LIFECYCLE_BITRIX24_APPS_PATH=str(apps_file))
        n0, n1 = name_of(p0.info["member_id"]), name_of(p1.info["member_id"])
        with web_service(postgres_url, env, port, monkeypatch) as service:
            for portal, pair in ((p0, a), (p1, b)):
                answer = portal.install_app(handler, scope="crm,placement,user_brief", client_id=pair.client_id,
                                            client_secret=pair.client_secret)
                assert answer["delivery"]["status"] == 200, answer["delivery"]
            registry = service.workers.registry()
            assert registry.load(n0).crm.client_secret.get_secret_value() == a.client_secret

        # the integrator regenerates application a's key and edits the apps file only, then restarts
        rotated = ClientPair(a.client_id, _pair("9").client_secret)
        _write(apps_file, [rotated, b])
        caplog.clear()
        with web_service(postgres_url, env, port, monkeypatch) as service:
            registry = service.workers.registry()
            assert registry.load(n0).crm.client_secret.get_secret_value() == rotated.client_secret
            assert registry.load(n1).crm.client_secret.get_secret_value() == b.client_secret  # untouched
            assert "1 installed portal(s) now refresh with their application's current secret" in caplog.text
            with registry.engine.connect() as conn:  # stored encrypted, like every portal secret
                text = conn.execute(sa.text("SELECT config FROM portals WHERE name = :n"), {"n": n0}).scalar()
            assert rotated.client_secret not in text and a.client_secret not in text
        assert rotated.client_secret not in caplog.text and a.client_secret not in caplog.text
        # a third start changes nothing
        caplog.clear()
        with web_service(postgres_url, env, port, monkeypatch):
            assert "now refresh with" not in caplog.text

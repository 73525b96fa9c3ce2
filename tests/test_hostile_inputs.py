"""Hostile inputs (issue 11, items 4 and 7): every bad configuration, environment or machine state ends
in one clear line saying what to fix, with the right exit code, and no secret or personal data in any
output: stdout, stderr (the JSON log), the debug traceback, or any table of the state store.

The cases are a table (:data:`CASES`): each builds a workspace (config file, environment, files) and
says the expected exit code and a fragment of the message. After running it, :func:`assert_clean`
scans stdout, stderr and every table of the SQLite store for the secrets in play (the Bitrix24 webhook
code, the amoCRM token, the PostgreSQL password, the ad-cabinet token) and for the planted customer's
name, phone and e-mail. Only the mirror's own columns (``customers`` name/phone/email/fields) and the
rendered campaign payloads may hold personal data: that is what they are for.

To add cases (items 5 and 6 of the issue), append :class:`Case` rows to :data:`CASES`. Most run
in-process (``connector.cli.main`` with capsys); ``subprocess=True`` runs ``python -m connector.cli``.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from connector import cli, logs
from sandbox.ads import running_ads
from sandbox.amocrm import running_account
from sandbox.bitrix24 import running_portal

ROOT = Path(__file__).resolve().parents[1]
PG_PASSWORD = "pgS3cretPassw0rd"
AMO_TOKEN_PLANTED = "amoTokenPlanted-5f8a2c91d7"
PLANTED = {"NAME": "Zinaida", "LAST_NAME": "Plantedova", "PHONE": "+79155550123", "EMAIL": "zinaida.planted@example.org"}
PD = ("Zinaida", "Plantedova", "9155550123", "zinaida.planted@example.org")
# Columns whose very purpose is to hold personal data (the mirror and the rendered campaign actions).
PD_COLUMNS = {("customers", "name"), ("customers", "phone"), ("customers", "email"), ("customers", "fields"),
              ("actions", "payload"),
              # the dashboard's member columns: the members page shows name, phone and e-mail (to signed-in users)
              ("dash_members", "name"), ("dash_members", "phone"), ("dash_members", "email")}


@dataclass
class Env:
    """What a case may use: the sandboxes, a work folder, and the environment it runs with."""

    root: Path
    portal: object
    tls_portal: object
    account: object
    ads: object
    environ: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)

    @property
    def webhook(self) -> str:
        return self.portal.webhook_url  # type: ignore[attr-defined]

    @property
    def code(self) -> str:
        return self.webhook.rstrip("/").rsplit("/", 1)[1]

    def config(self, crm: str, extra: str = "", state: str = 'url = "sqlite:///state.db"') -> None:
        (self.root / "lifecycle.toml").write_text(f"[crm]\n{crm}\n[state]\n{state}\n{extra}\n", encoding="utf-8")

    def bitrix(self, webhook: str | None = None, extra: str = "", state: str = 'url = "sqlite:///state.db"') -> None:
        """A Bitrix24 config whose webhook (a secret) comes from the environment, as the docs advise."""
        self.environ["LIFECYCLE_CRM__WEBHOOK_URL"] = webhook or self.webhook
        self.secrets += [self.code]
        self.config('kind = "bitrix24"\nrequests_per_second = 500\nreconcile_hours = 0', extra, state)

    def csv(self, extra: str = "", state: str = 'url = "sqlite:///state.db"') -> None:
        crm = self.root / "crm"
        crm.mkdir(exist_ok=True)
        (crm / "contacts.csv").write_text(
            "id,name,phone,email,birthday,responsible_id,created_at\n"
            f"1,{PLANTED['NAME']} {PLANTED['LAST_NAME']},{PLANTED['PHONE']},{PLANTED['EMAIL']},,1,2024-01-01\n"
            "2,Other Person,+79160000002,other@example.org,,1,2024-01-01\n", encoding="utf-8")
        (crm / "deals.csv").write_text(
            "id,contact_id,company_id,status,amount,currency,created_at,closed_at\n"
            "1,1,,won,1000,RUB,2026-10-01,2026-10-02\n", encoding="utf-8")
        self.config('kind = "csv"\npath = "crm"', extra, state)


@dataclass
class Case:
    id: str
    setup: Callable[[Env], None]
    exit: int
    message: str  # a fragment of stderr's "error: ..." line (or of stdout when exit is 0)
    argv: tuple[str, ...] = ("sync",)
    subprocess: bool = False
    max_seconds: float | None = None  # fail-fast cases: the whole command finishes within this
    traceback_allowed: bool = False  # -v prints a (redacted) traceback on purpose
    hook: Callable[[Env], object] | None = None  # in-process: a context manager around the run
    check: Callable[[Env, str, str], None] | None = None  # more assertions on (env, stdout, stderr)


# -- set-ups ---------------------------------------------------------------------------------------


def webhook_port_99999(e: Env) -> None:
    e.bitrix(e.webhook.replace(e.webhook.split("/")[2], "127.0.0.1:99999"))


def webhook_api_path(e: Env) -> None:
    """A path the portal does not know: the sandbox, like a portal, echoes it (with the code) in its 404."""
    host = e.webhook.split("/")[2]
    e.bitrix(f"http://{host}/api/{e.code}/")


def webhook_refused(e: Env) -> None:
    e.bitrix(f"http://127.0.0.1:9/rest/1/{e.code}/")


def webhook_userinfo_refused(e: Env) -> None:
    e.secrets.append("hookPassw0rd")
    e.bitrix(f"http://hookuser:hookPassw0rd@127.0.0.1:9/rest/1/{e.code}/")


def webhook_https_to_http(e: Env) -> None:
    e.bitrix(e.webhook.replace("http://", "https://"))


def webhook_http_to_https(e: Env) -> None:
    url = e.tls_portal.webhook_url  # type: ignore[attr-defined]
    e.secrets.append(url.rstrip("/").rsplit("/", 1)[1])
    e.bitrix(url.replace("https://", "http://"))


def amo_refused(e: Env) -> None:
    e.environ["LIFECYCLE_CRM__ACCESS_TOKEN"] = AMO_TOKEN_PLANTED
    e.secrets.append(AMO_TOKEN_PLANTED)
    e.config('kind = "amocrm"\nbase_url = "http://127.0.0.1:9"')


def amo_https_to_http(e: Env) -> None:
    e.environ["LIFECYCLE_CRM__ACCESS_TOKEN"] = AMO_TOKEN_PLANTED
    e.secrets.append(AMO_TOKEN_PLANTED)
    e.config(f'kind = "amocrm"\nbase_url = "{e.account.base_url.replace("http://", "https://")}"')  # type: ignore[attr-defined]


def amo_record_without_id(e: Env) -> None:
    """The account serves a contact whose id is not a number, carrying the planted name, phone, e-mail."""
    acct = e.account
    acct.corrupt("contacts", 2, id="x-2", name=f"{PLANTED['NAME']} {PLANTED['LAST_NAME']}", custom_fields_values=[  # type: ignore[attr-defined]
        {"field_id": 1, "field_code": "PHONE", "values": [{"value": PLANTED["PHONE"]}]},
        {"field_id": 2, "field_code": "EMAIL", "values": [{"value": PLANTED["EMAIL"]}]}])
    e.environ["LIFECYCLE_CRM__ACCESS_TOKEN"] = acct.access_token  # type: ignore[attr-defined]
    e.secrets.append(acct.access_token)  # type: ignore[attr-defined]
    e.config(f'kind = "amocrm"\nbase_url = "{acct.base_url}"\nrequests_per_second = 500')  # type: ignore[attr-defined]


def logged(fragment: str) -> Callable[[Env, str, str], None]:
    def check(_e: Env, _out: str, err: str) -> None:
        assert fragment in err, err
    return check


def state(url: str) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        e.bitrix(state=f'url = "{url}"')
    return setup


def state_directory(e: Env) -> None:
    (e.root / "adir").mkdir()
    e.bitrix(state='url = "sqlite:///adir"')


def state_not_a_database(e: Env) -> None:
    (e.root / "notes.db").write_text("this is a shopping list, not a database\n" * 50, encoding="utf-8")
    e.bitrix(state='url = "sqlite:///notes.db"')


def state_refused_postgres(e: Env) -> None:
    e.secrets.append(PG_PASSWORD)
    e.environ["LIFECYCLE_STATE__URL"] = f"postgresql+psycopg://lifecycle:{PG_PASSWORD}@127.0.0.1:9/lifecycle"
    e.bitrix()


def env_value(name: str, value: str) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        e.environ[name] = value
        e.bitrix()
    return setup


def rule_chain(e: Env) -> None:
    chain = '[[segment]]\nname = "c0"\nwhen = "purchases >= 1"\n' + "".join(
        f'[[segment]]\nname = "c{i}"\nwhen = "c{i - 1}"\n' for i in range(1, 1500))
    e.csv(chain)


def huge_number(e: Env) -> None:
    e.csv('[[segment]]\nname = "big"\nwhen = "purchases > ' + "9" * 5000 + '"\n')


def unbalanced_brace(e: Env) -> None:
    e.bitrix(extra='[[campaign]]\nname = "winback"\nsegment = "status.prospect"\n'
             '[[campaign.on_enter]]\naction = "call_task"\ntitle = "Call {name"\n')


def audiences_refused(e: Env) -> None:
    info = e.ads.info  # type: ignore[attr-defined]
    e.secrets.append("y0_wrongTokenPlanted12345")
    e.csv(f'[[audience]]\nsegment = "status.prospect"\ncabinet = "yandex"\n'
          f'[audiences]\nyandex_url = "{info["yandex"]["base_url"]}"\nyandex_token = "y0_wrongTokenPlanted12345"\n')


# -- machine states, in-process: real SQLite refusals, provoked through its own pragmas ---------------


@contextmanager
def sqlite_pragma(statement: Callable[[sqlite3.Connection], str | None]) -> Iterator[None]:
    """Run a pragma on every new SQLite connection of the block (every state-store connection)."""

    def on_connect(dbapi_conn, _record):
        sql = statement(dbapi_conn)
        if sql:
            dbapi_conn.execute(sql)

    sa.event.listen(sa.engine.Engine, "connect", on_connect)
    try:
        yield
    finally:
        sa.event.remove(sa.engine.Engine, "connect", on_connect)


def disk_full(e: Env) -> object:
    """SQLite's own SQLITE_FULL: once the run has started (the store migrated, the run recorded), the file
    may not grow, so the pull's insert of the customers (names, phones, e-mails in its parameters) fails."""
    opened = []

    def limit(conn: sqlite3.Connection) -> str | None:
        opened.append(1)
        if len(opened) <= 2:  # the migration, the run record
            return None
        return f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}"

    return sqlite_pragma(limit)


def read_only(e: Env) -> object:
    """After a first good sync the state file cannot be written (root ignores chmod, so SQLite's
    query_only stands in for a read-only file)."""
    assert cli.main(["sync", "--config", str(e.root / "lifecycle.toml")]) == 0
    return sqlite_pragma(lambda c: "PRAGMA query_only = ON")


def runs_finished(e: Env, _out: str, _err: str) -> None:
    db = e.root / "state.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            statuses = [r[0] for r in conn.execute("SELECT status FROM runs")]
        assert "running" not in statuses, statuses


def failed_run_says(fragment: str) -> Callable[[Env, str, str], None]:
    def check(e: Env, _out: str, _err: str) -> None:
        with sqlite3.connect(e.root / "state.db") as conn:
            rows = list(conn.execute("SELECT status, error FROM runs ORDER BY id"))
        assert rows and rows[-1][0] == "failed" and fragment in rows[-1][1], rows
    return check


CASES = [
    # item 4: the webhook secret and personal data never leak
    Case("webhook-port-99999", webhook_port_99999, 2, "webhook_url: the port is not a number", subprocess=True),
    Case("webhook-path-echoed", webhook_api_path, 1, "unknown path /api/***",
         check=failed_run_says("unknown path /api/***")),
    Case("webhook-userinfo", webhook_userinfo_refused, 1, "connection refused at 127.0.0.1:9: check [crm] webhook_url",
         max_seconds=10),
    Case("debug-traceback-redacted", lambda e: e.bitrix(), 1, "database or disk is full", argv=("-v", "sync"),
         hook=lambda e: disk_full(e), traceback_allowed=True),
    Case("disk-full", lambda e: e.bitrix(), 1, "database or disk is full", hook=disk_full,
         check=failed_run_says("OperationalError: database or disk is full")),
    # item 7: [state] url
    Case("state-missing-folder", state("sqlite:///no/such/folder/state.db"), 2, "does not exist"),
    Case("state-garbage", state("this is not a url"), 2, "is not a database URL"),
    Case("state-directory", state_directory, 2, "points at the folder"),
    Case("state-memory", state("sqlite:///:memory:"), 2, "keeps state in memory"),
    Case("state-memory-empty", state("sqlite://"), 2, "keeps state in memory"),
    Case("state-not-a-database", state_not_a_database, 2, "not an SQLite database", subprocess=True),
    Case("state-postgres-refused", state_refused_postgres, 2, "connection refused at 127.0.0.1:9", max_seconds=20),
    Case("state-unsupported", state("mysql://u:p@localhost/db"), 2, "is not supported"),
    # the store is opened for writing (migrations, the sync lock) before a run starts: refused up front
    Case("state-read-only", lambda e: e.bitrix(), 2, "is read-only; make both writable", hook=read_only,
         check=runs_finished),
    # item 7: the environment
    Case("env-malformed-json-section", env_value("LIFECYCLE_CRM", "{bad json"), 2, "LIFECYCLE_CRM: not valid JSON",
         subprocess=True),
    Case("env-malformed-json-key", env_value("LIFECYCLE_SCHEDULE__AT", '["07:00"'), 2,
         "LIFECYCLE_SCHEDULE__AT: not valid JSON"),
    Case("env-section-typo", env_value("LIFECYCLE_STATEE__URL", "sqlite:///x.db"), 2,
         "LIFECYCLE_STATEE__URL: unknown section 'statee' (did you mean LIFECYCLE_STATE__...?)"),
    # item 7: rules and templates
    Case("rule-chain-1500", rule_chain, 0, "c1499", argv=("report", "--segment", "c1499")),
    Case("rule-5000-digits", huge_number, 2, "segment 'big': when: number 999999999999...(5000 characters) is too large"),
    Case("template-unbalanced-brace", unbalanced_brace, 2, "winback"),
    # item 7: the CRM cannot be reached
    Case("portal-refused", webhook_refused, 1, "connection refused at 127.0.0.1:9: check [crm] webhook_url",
         subprocess=True, max_seconds=15),
    Case("portal-https-to-http", webhook_https_to_http, 1, "http/https mix-up", max_seconds=10),
    Case("portal-http-to-https", webhook_http_to_https, 1, "http/https mix-up", max_seconds=10),
    Case("amocrm-refused", amo_refused, 1, "connection refused at 127.0.0.1:9: check [crm] base_url", max_seconds=10),
    Case("amocrm-https-to-http", amo_https_to_http, 1, "http/https mix-up): check [crm] base_url", max_seconds=10),
    Case("amocrm-record-without-id", amo_record_without_id, 0, "1 rows skipped",
         check=logged("record without a numeric id (id = a str); its data is not logged")),
    # item 7: every audience refused the credentials
    Case("audiences-credentials", audiences_refused, 1, "every audience failed"),
]


# -- the runner --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandboxes():
    with running_portal(generate=(40, 80)) as portal, running_portal(generate=(5, 5), tls=True) as tls_portal, \
            running_account(generate=(5, 5)) as account, running_ads(cabinets=["yandex"]) as ads:
        status, body = portal.call("crm.contact.add", {"fields": {
            "NAME": PLANTED["NAME"], "LAST_NAME": PLANTED["LAST_NAME"],
            "PHONE": [{"VALUE": PLANTED["PHONE"], "VALUE_TYPE": "WORK"}],
            "EMAIL": [{"VALUE": PLANTED["EMAIL"], "VALUE_TYPE": "WORK"}]}})
        assert status == 200, body
        yield portal, tls_portal, account, ads


def run_case(case: Case, e: Env, capsys, monkeypatch) -> tuple[int, str, str, float]:
    argv = [*case.argv, "--config", str(e.root / "lifecycle.toml")]
    started = time.monotonic()
    if case.subprocess:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LIFECYCLE_")} | e.environ
        env["PYTHONPATH"] = str(ROOT)
        proc = subprocess.run([sys.executable, "-m", "connector.cli", *argv], capture_output=True, text=True,
                              cwd=e.root, env=env, timeout=120)
        return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started
    for key in [k for k in os.environ if k.upper().startswith("LIFECYCLE_")]:
        monkeypatch.delenv(key)
    for key, value in e.environ.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(e.root)
    logs._secrets.clear()  # each case must redact on its own, not thanks to an earlier one
    capsys.readouterr()
    hook = case.hook(e) if case.hook else None
    if hook is not None:
        with hook:  # type: ignore[attr-defined]
            code = cli.main(argv)
    else:
        code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err, time.monotonic() - started


def store_tables(root: Path) -> dict[tuple[str, str], list[str]]:
    """Every column of every table of every SQLite file in the workspace, as text."""
    found: dict[tuple[str, str], list[str]] = {}
    for db in root.rglob("*.db"):
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        except sqlite3.DatabaseError:
            continue  # the case's own garbage file
        with conn:
            for table in tables:
                cursor = conn.execute(f'SELECT * FROM "{table}"')
                names = [d[0] for d in cursor.description]
                for row in cursor:
                    for name, value in zip(names, row):
                        found.setdefault((table, name), []).append("" if value is None else str(value))
        conn.close()
    return found


def assert_clean(e: Env, out: str, err: str) -> None:
    outputs = {"stdout": out, "stderr": err}
    for secret in e.secrets:
        for where, text in outputs.items():
            assert secret not in text, f"secret {secret!r} in {where}:\n{text}"
    for pd in PD:
        for where, text in outputs.items():
            assert pd not in text, f"personal data {pd!r} in {where}:\n{text}"
    for (table, column), values in store_tables(e.root).items():
        text = "\n".join(values)
        for secret in e.secrets:
            assert secret not in text, f"secret {secret!r} in {table}.{column}"
        if (table, column) not in PD_COLUMNS:
            for pd in PD:
                assert pd not in text, f"personal data {pd!r} in {table}.{column}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_gives_one_clear_line_and_leaks_nothing(case: Case, sandboxes, tmp_path, capsys, monkeypatch):
    portal, tls_portal, account, ads = sandboxes
    e = Env(tmp_path, portal, tls_portal, account, ads)
    case.setup(e)
    code, out, err, seconds = run_case(case, e, capsys, monkeypatch)
    shown = f"exit {code} after {seconds:.1f}s\n--- stdout\n{out}\n--- stderr\n{err}"
    assert code == case.exit, shown
    if case.exit:
        lines = err.splitlines()
        errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
        assert len(errors) == 1, shown
        # the line itself, plus the indented detail a configuration error or a rule's caret adds
        block = [lines[errors[0]]] + [line for line in lines[errors[0] + 1:] if line.startswith(" ")][:6]
        assert case.message in "\n".join(block), shown
    else:
        assert case.message in out, shown
    if not case.traceback_allowed:
        assert "Traceback" not in err and "Traceback" not in out, shown
    else:
        assert "Traceback" in err, shown  # -v shows it, redacted (checked below)
    if case.max_seconds is not None:
        assert seconds < case.max_seconds, shown
    if case.check is not None:
        case.check(e, out, err)
    assert_clean(e, out, err)


def test_amocrm_record_without_a_numeric_id_is_reported_without_its_personal_data():
    """The mapping error of a record whose id is not a number names the problem, not the record."""
    from adapters.amocrm.mapping import MappingError, to_customer, to_deal

    record = {"id": "x-1", "name": f"{PLANTED['NAME']} {PLANTED['LAST_NAME']}", "custom_fields_values": [
        {"field_code": "PHONE", "values": [{"value": PLANTED["PHONE"]}]},
        {"field_code": "EMAIL", "values": [{"value": PLANTED["EMAIL"]}]}]}
    from zoneinfo import ZoneInfo

    for convert in (lambda r: to_customer(r, "contact", ZoneInfo("Europe/Moscow"), None), to_deal):
        with pytest.raises(MappingError) as info:
            convert(record)
        message = str(info.value)
        assert "without a numeric id" in message
        for pd in PD:
            assert pd not in message, message


def test_redact_masks_every_form_of_a_secret():
    logs._secrets.clear()
    logs.register_secrets(["https://user:pa%20ss%2Fw@portal.example/rest/1/k3yC0de9x/", "Tok/en+1=="])
    text = logs.redact("k3yC0de9x pa%20ss%2Fw <pa ss/w> Tok%2Fen%2B1%3D%3D Tok/en+1== Tok%2fen%2b1%3d%3d Tok\\/en+1== "
                       "https://x:y@h/ [parameters: ('Zinaida', '+79155550123')]\n(Background on this error at: z)")
    for leaked in ("k3yC0de9x", "pa%20ss", "pa ss", "Tok%2F", "Tok/en", "Tok%2f", "Tok\\/en", "x:y@", "Zinaida"):
        assert leaked not in text, text

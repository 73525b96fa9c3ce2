"""Operator commands around a sync: ``init``, ``check``, ``config show``, ``runs``, ``members`` and the
sandbox's ``--print-env``.

* ``check`` runs every read-only check a sync depends on and collects every problem before it prints
  them (exit 1 if any): the state store; the CRM's connectivity and, on Bitrix24, the webhook's scopes
  (method ``scope``); on amoCRM the account (``/api/v4/account``); the campaigns' pipelines, stages and
  round-robin users (the executors' own ``resolve``, called once per campaign and aspect so one bad
  pipeline does not hide a bad user); one read-only call per configured ad cabinet. It sends no write
  request to any of them.
* ``config show`` prints the effective settings with where each came from (file, env, default); secret
  values are masked.
* ``members`` reads the mirror and the stored membership (the last sync's), never the CRM. The mirror
  keeps the responsible user's id only, not the name.
* ``init`` writes a commented starter config. A secret it is given (webhook URL, token) goes into the
  file (created readable by its owner only) and is never printed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.config import ConfigError, LoadedConfig
from connector.kits import adapter_settings

# -- check ------------------------------------------------------------------------------------------

# Bitrix24 scopes a sync needs: crm always; user to check round-robin users; task for call tasks.
SCOPE_NEEDS = {"bizproc": "starting business processes (bizproc.workflow.start)",
               "mail": "checking the e-mail senders (mail.mailbox.senders)", "crm": "reading contacts, companies and deals", "user": "checking the campaigns' users (user.get)",
               "task": "creating call tasks (tasks.task.add)"}


@dataclass
class CheckReport:
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.passed.append(text)

    def problem(self, text: str) -> None:
        self.problems.append(text)


def _one_line(exc: BaseException) -> str:
    from connector.logs import redact, safe_error

    if isinstance(exc, ConfigError):
        return redact(str(exc)).replace("\n", " / ")
    name = type(exc).__name__
    text = safe_error(exc)
    own = name.startswith(("Bitrix", "Amo", "Ads", "Credentials", "Quota"))  # messages written for the operator
    return text[len(name) + 2:] if own and text.startswith(name + ": ") else text


def run_checks(config: LoadedConfig) -> CheckReport:
    """Every read-only check a sync depends on; every problem, not just the first."""
    report = CheckReport()
    store = None
    try:
        from connector.pipeline import open_store

        store = open_store(config)
        report.ok(f"state store opens ({config.state_url.split(':', 1)[0]})")
    except Exception as exc:  # noqa: BLE001 - every failure is a problem to list
        report.problem(f"state store: {_one_line(exc)}")
    try:
        connected = _check_crm(config, store, report)
        if connected:
            _check_campaigns(config, store, report)
            if store is not None:  # issue 18: Salesbot runs exactly once only with the bot's first step
                for state, line in salesbot_states(config):
                    if state == "seen":
                        report.ok(line)
                    elif state == "missing":
                        report.problem(line)
                    else:
                        report.skipped.append(line)
        elif config.settings.campaign:
            report.skipped.append("campaign pipelines and users: not checked, the CRM is not reachable")
        _check_cabinets(config, report)
    finally:
        if store is not None:
            store.close()
    return report


def salesbot_notes(config: Any) -> list[str]:
    """One line per Salesbot campaign for ``lifecycle plan``: whether its runs are exactly once (the bot's
    first step was seen overwriting the "crm-lifecycle bot" field), at most once (it was not), or not checked
    yet (docs/campaigns.md "Salesbot set-up")."""
    return [line for _, line in salesbot_states(config)]


def salesbot_states(config: Any) -> list[tuple[str | None, str]]:
    """(state, line) per Salesbot campaign: state "seen", "missing" or None (not checked yet)."""
    bots = [(c.name, a.bot_id) for c in config.settings.campaign for a in (*c.on_enter, *c.on_exit) if a.action == "salesbot"]
    if not bots:
        return []
    from adapters.amocrm.channels import BOT_FIELD_NAME, bot_setup
    from connector.pipeline import open_store

    store = open_store(config)
    try:
        setup = bot_setup([r for r in store.ledger(["done"]) if r.action == "salesbot"])
    finally:
        store.close()
    lines = []
    for name, bot in bots:
        state = setup.get(int(bot))
        if state == "seen":
            text = f"its first step overwrites {BOT_FIELD_NAME!r}: each run happens exactly once"
        elif state == "missing":
            text = (f"did NOT overwrite {BOT_FIELD_NAME!r} in its first step: runs are at most once (a run "
                    "interrupted mid-request is not resent); add the step (docs/campaigns.md, Salesbot set-up)")
        else:
            text = (f"not checked yet; its first step must overwrite {BOT_FIELD_NAME!r} for exactly-once runs "
                    "(docs/campaigns.md, Salesbot set-up)")
        lines.append((state, f"campaign {name!r}: Salesbot {bot} {text}"))
    return lines


def _check_crm(config: LoadedConfig, store: Any, report: CheckReport) -> bool:
    crm = config.crm
    if crm.kind == "csv":
        assert crm.path is not None
        missing = [n for n in ("contacts.csv", "deals.csv") if not (crm.path / n).is_file()]
        if not crm.path.is_dir() or missing:
            report.problem(f"[crm] path {crm.path}: {'not a folder' if not crm.path.is_dir() else 'missing ' + ', '.join(missing)}")
            return False
        report.ok(f"CSV folder {crm.path} holds contacts.csv and deals.csv")
        return True
    if store is None:
        report.skipped.append("CRM: not checked, the state store (which keeps OAuth tokens) does not open")
        return False
    if crm.kind == "bitrix24":
        return _check_bitrix24(config, store, report)
    return _check_amocrm(config, store, report)


def _needed_scopes(config: LoadedConfig) -> list[str]:
    needed = ["crm"]
    campaigns = config.settings.campaign
    if any(isinstance(c.responsible, tuple) for c in campaigns):
        needed.append("user")
    actions = [a for c in campaigns for a in (*c.on_enter, *c.on_exit)]
    if any((a.action == "call_task" and a.kind == "task") or a.action == "deal" for a in actions):
        needed.append("task")
    if any(a.action == "bizproc" for a in actions):
        needed.append("bizproc")
    if any(a.action == "email" for a in actions):
        needed.append("mail")
    return needed


def _check_bitrix24(config: LoadedConfig, store: Any, report: CheckReport) -> bool:
    import asyncio

    from adapters.bitrix24.source import make_client

    async def probe() -> Any:
        async with make_client(adapter_settings(config), store) as client:
            return (await client.call("scope", {})).get("result")

    try:
        scopes = asyncio.run(probe())
    except Exception as exc:  # noqa: BLE001
        report.problem(f"Bitrix24 connection: {_one_line(exc)}")
        return False
    report.ok("Bitrix24 answers (method scope)")
    granted = {str(s) for s in scopes} if isinstance(scopes, list) else set()
    for scope in _needed_scopes(config):
        aliases = {"user": {"user", "user_brief", "user_basic"}, "task": {"task", "tasks"}}.get(scope, {scope})
        if granted & aliases:
            report.ok(f"scope {scope!r} granted")
        else:
            report.problem(f"Bitrix24 webhook lacks scope {scope!r}, needed for {SCOPE_NEEDS[scope]}; "
                           f"edit the inbound webhook and tick it (granted: {', '.join(sorted(granted)) or 'none'})")
    return "crm" in granted


def _check_amocrm(config: LoadedConfig, store: Any, report: CheckReport) -> bool:
    from adapters.amocrm.source import make_client

    try:
        with make_client(adapter_settings(config), store) as client:
            account = client.get("/api/v4/account") or {}
    except Exception as exc:  # noqa: BLE001
        report.problem(f"amoCRM connection: {_one_line(exc)}")
        return False
    report.ok(f"amoCRM answers (account id {account.get('id', '?')})")
    return True


def _check_campaigns(config: LoadedConfig, store: Any, report: CheckReport) -> None:
    campaigns = config.settings.campaign
    if not campaigns or config.crm.kind == "csv":
        return
    from connector.pipeline import make_sink

    try:
        sink = make_sink(config, store)
    except Exception as exc:  # noqa: BLE001
        report.problem(f"campaigns: {_one_line(exc)}")
        return
    try:
        for campaign in campaigns:
            parts = []
            if any(a.action == "deal" for a in (*campaign.on_enter, *campaign.on_exit)):
                parts.append(("pipelines and stages", campaign.model_copy(update={"responsible": "owner"})))
            if isinstance(campaign.responsible, tuple):
                parts.append(("users", campaign.model_copy(update={"on_enter": (), "on_exit": ()})))
            from connector.channels import CHANNELS

            own = {when: tuple(a for a in getattr(campaign, when) if a.action in CHANNELS) for when in ("on_enter", "on_exit")}
            if any(own.values()):  # the CRM's own channels: templates, stages, rights (connector/channels.py)
                parts.append(("channels (business-process templates, stages, rights)",
                              campaign.model_copy(update={"responsible": "owner", **own})))
            for what, part in parts:
                try:
                    sink.resolve((part,))
                    report.ok(f"campaign {campaign.name!r}: {what} exist")
                except Exception as exc:  # noqa: BLE001
                    report.problem(_one_line(exc))
    finally:
        sink.close()


def _check_cabinets(config: LoadedConfig, report: CheckReport) -> None:
    from adapters.ads.cabinets import CLIENTS

    for audience in config.settings.audience:
        name = audience.name or config.label(audience.segment)
        where = f"audience {name!r} ({audience.cabinet})"
        if audience.cabinet == "google":
            report.skipped.append(f"{where}: not checked (the Data Manager API has no read-only call to try)")
            continue
        client = None
        try:
            client = CLIENTS[audience.cabinet](audience, config.settings.audiences)
            client.find(name)  # a read-only list call
            report.ok(f"{where}: the cabinet accepts the credentials")
        except AttributeError:
            report.problem(f"{where}: no credentials for {audience.cabinet} in [audiences]")
        except Exception as exc:  # noqa: BLE001
            report.problem(f"{where}: {_one_line(exc)}")
        finally:
            if client is not None:
                client.close()


def check_command(config: LoadedConfig, out: Any) -> int:
    report = run_checks(config)
    for line in report.passed:
        print(f"ok       {line}")
    for line in report.skipped:
        print(f"skipped  {line}")
    for line in report.problems:
        print(f"PROBLEM  {line}")
    if report.problems:
        print(f"error: {len(report.problems)} problem(s) found; a sync would fail or do less than configured",
              file=sys.stderr)
        return 1
    print("everything a sync needs is in place")
    return 0


# -- config show ------------------------------------------------------------------------------------

def _flatten(prefix: tuple[str, ...], value: Any, out: dict[tuple[str, ...], Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten((*prefix, str(key)), item, out)
    else:
        out[prefix] = value


def effective_settings(config: LoadedConfig) -> list[tuple[str, str, str]]:
    """(key, shown value, source) for every setting; source is ``file``, ``env VAR`` or ``default``."""
    import tomllib

    from connector.config import _env_var_for
    from connector.logs import SECRET_KEYS, redact

    data: dict[str, Any] = {}
    if config.path.is_file():
        data = tomllib.loads(config.path.read_text(encoding="utf-8"))
    values: dict[tuple[str, ...], Any] = {}
    _flatten((), config.settings.model_dump(mode="json"), values)
    rows = []
    for key, value in sorted(values.items()):
        env = _env_var_for(key)
        node: Any = data
        for part in key:
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        source = f"env {env}" if env else "file" if node is not KeyError else "default"
        if key[-1] in SECRET_KEYS:
            shown = "(not set)" if value is None else "*** (set)"
        else:
            shown = redact(json.dumps(value, ensure_ascii=False))
        rows.append((".".join(key), shown, source))
    return rows


def config_show(config: LoadedConfig, out: Any, fmt: str) -> int:
    rows = effective_settings(config)
    if fmt == "json":
        print(json.dumps([{"key": k, "value": v, "source": s} for k, v, s in rows], ensure_ascii=False))
        return 0
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"Effective settings ({config.path})")
    for col in ("key", "value", "source"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*map(Text, row))
    out.print(table)
    return 0


# -- runs -------------------------------------------------------------------------------------------

RUN_STATS = ("customers", "deals", "rows_skipped", "tags_failed", "actions_created", "actions_failed")


def runs_command(config: LoadedConfig, out: Any, *, failed: bool, limit: int, fmt: str) -> int:
    from connector.logs import redact
    from connector.pipeline import open_store

    store = open_store(config)
    try:
        runs = store.last_runs(limit * 5 if failed else limit)
        if failed:
            runs = [r for r in runs if r["status"] == "failed"][:limit]
        errors = [r for r in store.ledger(["failed"])]
    finally:
        store.close()
    record_errors = [{"run": r["planned_run"], "campaign": r["campaign"], "action": r["action"],
                      "customer_id": r["customer_id"], "attempts": r["attempts"], "error": redact(r["error"] or "")}
                     for r in errors]
    skipped = [{"run": r["id"], **e} for r in runs for e in r["stats"].get("record_errors") or []]
    if fmt == "json":
        print(json.dumps({"runs": [{"id": r["id"], "kind": r["kind"], "as_of": str(r["as_of"] or ""),
                                    "started_at": str(r["started_at"]), "finished_at": str(r["finished_at"] or ""),
                                    "status": r["status"], "error": redact(r["error"] or ""),
                                    "stats": {k: r["stats"].get(k) for k in RUN_STATS if k in r["stats"]}}
                                   for r in runs],
                          "record_errors": record_errors, "skipped_records": skipped}, ensure_ascii=False, default=str))
        return 0
    from rich.table import Table
    from rich.text import Text

    if not runs:
        out.print("no failed run recorded" if failed else "no run recorded yet; run `lifecycle sync`")
    else:
        table = Table(title="Failed runs" if failed else "Runs (newest first)")
        for col in ("run", "kind", "as of", "started", "status", "counts", "error"):
            table.add_column(col, overflow="fold")
        for r in runs:
            counts = ", ".join(f"{k} {r['stats'][k]}" for k in RUN_STATS if k in r["stats"])
            table.add_row(*map(Text, (str(r["id"]), r["kind"], str(r["as_of"] or ""), str(r["started_at"])[:19],
                                      r["status"], counts, redact(r["error"] or ""))))
        out.print(table)
    if skipped:
        table = Table(title="Per-record errors: records the pull skipped (the first 50 of each run)")
        for col in ("run", "record", "id", "error"):
            table.add_column(col, overflow="fold")
        for e in skipped:
            table.add_row(*map(Text, (str(e["run"]), e["record"], str(e["record_id"] or ""), e["error"])))
        out.print(table)
    if record_errors:
        table = Table(title="Per-record errors: campaign actions that failed (retried in later runs)")
        for col in ("planned in run", "campaign", "action", "customer", "attempts", "error"):
            table.add_column(col, overflow="fold")
        for e in record_errors:
            table.add_row(*map(Text, (str(e["run"]), e["campaign"], e["action"], str(e["customer_id"]), str(e["attempts"]),
                                      e["error"])))
        out.print(table)
    return 0


# -- members ----------------------------------------------------------------------------------------

MEMBER_COLUMNS = ("id", "name", "phone", "email", "responsible_id", "responsible", "purchases", "monetary", "recency_days")


def members_rows(config: LoadedConfig, segment: str) -> list[dict[str, Any]]:
    """The segment's members as stored by the last sync, with their card and key features."""
    import polars as pl

    from connector.pipeline import compute, open_store, today_in

    names = config.rules.segment_names
    if segment not in names:
        import difflib

        close = difflib.get_close_matches(segment, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"segment {segment!r}: no such segment{hint}; known: {', '.join(names)}")
    store = open_store(config)
    try:
        stored = store.membership_frame()
        ids = stored.filter(pl.col("segment") == segment).get_column("customer_id").sort().to_list()
        cards = store.customer_cards(config.crm.customer, ids) if ids else {}
        reps = store.user_names()  # the CRM's users as the last sync stored them (plan and the dashboard too)
        features: dict[int, dict[str, Any]] = {}
        if ids:
            comp = compute(store, config, today_in(config.crm.timezone), stored)
            keep = [c for c in ("id", "purchases", "monetary", "recency_days") if c in comp.features.columns]
            features = {r["id"]: r for r in comp.features.filter(pl.col("id").is_in(ids)).select(keep).iter_rows(named=True)}
    finally:
        store.close()
    rows = []
    for cid in ids:
        card, feat = cards.get(cid, {}), features.get(cid, {})
        rows.append({"id": cid, "name": card.get("name"), "phone": card.get("phone"), "email": card.get("email"),
                     "responsible_id": card.get("responsible_id"), "responsible": _rep_name(reps, card.get("responsible_id")),
                     "purchases": feat.get("purchases"),
                     "monetary": feat.get("monetary"), "recency_days": feat.get("recency_days")})
    return rows


def _rep_name(reps: dict[int, str], rid: Any) -> str | None:
    try:
        return reps.get(int(rid)) if rid not in (None, "") else None
    except (TypeError, ValueError):
        return None


def members_command(config: LoadedConfig, out: Any, segment: str, fmt: str) -> int:
    rows = members_rows(config, segment)
    if not rows:
        print(f"note: no stored member of {segment!r}; membership is stored by `lifecycle sync`", file=sys.stderr)
    if fmt == "json":
        print(json.dumps(rows, ensure_ascii=False, default=str))
        return 0
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(MEMBER_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(buf.getvalue())
        return 0
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{config.label(segment)} ({segment}): {len(rows)} members, as of the last sync",
                  caption="responsible: the rep's name from the CRM's users stored by the last sync, with the CRM "
                          "user id (the user id alone where no name is stored)")
    shown = [c for c in MEMBER_COLUMNS if c != "responsible_id"]
    rows = [{**r, "responsible": (f"{r['responsible']} ({r['responsible_id']})" if r["responsible"]
                                  else r["responsible_id"])} for r in rows]
    for col in shown:
        table.add_column(col, overflow="fold", justify="right" if col in ("id", "purchases", "monetary", "recency_days") else "left")
    for r in rows:
        table.add_row(*(Text("" if r[c] is None else f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]))
                        for c in shown))
    _print_unwrapped(out, table)
    return 0


def _print_unwrapped(out: Any, table: Any) -> None:
    """Print a table as wide as its content needs (an e-mail folded over two lines is hard to copy)."""
    from rich.console import Console
    from rich.measure import Measurement

    needed = Measurement.get(out, out.options.update(width=10_000), table).maximum
    if needed > out.width:
        out = Console(file=out.file, width=needed, soft_wrap=False, force_terminal=out.is_terminal)
    out.print(table)


# -- init -------------------------------------------------------------------------------------------

STARTER = {
    "bitrix24": """\
# lifecycle.toml - written by `lifecycle init`. Every key can also come from the environment:
# LIFECYCLE_<SECTION>__<KEY>, e.g. LIFECYCLE_CRM__WEBHOOK_URL (the environment wins over this file).

[crm]
kind = "bitrix24"
name = "default"              # key of this portal in the state store
timezone = "Europe/Moscow"    # the portal's time zone: 'today' for the segments
customer = "contact"          # or "company"
{secret_line}
# requests_per_second = 2     # 5 on Enterprise plans

[state]
url = "sqlite:///lifecycle.db"   # or postgresql+psycopg://USER:PASSWORD@HOST/DB

[segments]
presets = ["lifecycle", "status", "cadence", "birthday"]

# [writeback]
# tag_segments = ["lifecycle.*"]  # write these segments onto the customer card (UF_CRM_LIFECYCLE)
""",
    "amocrm": """\
# lifecycle.toml - written by `lifecycle init`. Every key can also come from the environment:
# LIFECYCLE_<SECTION>__<KEY>, e.g. LIFECYCLE_CRM__ACCESS_TOKEN (the environment wins over this file).

[crm]
kind = "amocrm"
name = "default"              # key of this account in the state store
base_url = {url}
timezone = "Europe/Moscow"
customer = "contact"          # or "company"
{secret_line}

[state]
url = "sqlite:///lifecycle.db"

[segments]
presets = ["lifecycle", "status", "cadence", "birthday"]

# [writeback]
# tag_segments = ["lifecycle.*"]  # write these segments as tags onto the customer card
""",
    "csv": """\
# lifecycle.toml - written by `lifecycle init`.

[crm]
kind = "csv"
path = {url}                  # folder with contacts.csv and deals.csv (companies.csv optional)
timezone = "Europe/Moscow"

[state]
url = "sqlite:///lifecycle.db"

[segments]
presets = ["lifecycle", "status", "cadence", "birthday"]
""",
}


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def init_command(args: Any, out: Any) -> int:
    """Write a commented starter config; ask for what is missing when on a terminal."""
    import getpass

    target = Path(args.output)
    if target.exists() and not args.force:
        print(f"error: {target} exists; pass --force to overwrite it or -o FILE for another name", file=sys.stderr)
        return 2
    interactive = sys.stdin.isatty()
    kind = args.kind
    if kind is None and interactive:
        kind = input("CRM kind (bitrix24, amocrm, csv): ").strip().lower()
    if kind not in STARTER:
        print("error: give the CRM kind: lifecycle init --kind bitrix24|amocrm|csv", file=sys.stderr)
        return 2
    url = args.url
    secret = None
    if kind == "bitrix24":
        if url is None and interactive:
            url = getpass.getpass("inbound webhook URL (https://PORTAL/rest/USER_ID/CODE/; not shown): ").strip()
        if url and not url.startswith(("http://", "https://")):
            print("error: --url must be the inbound webhook URL, https://PORTAL/rest/USER_ID/CODE/", file=sys.stderr)
            return 2
        secret = url
        secret_line = (f"webhook_url = {_toml_str(url)}   # a secret: keep this file private" if url else
                       '# webhook_url = "https://PORTAL/rest/USER_ID/CODE/"   # better: LIFECYCLE_CRM__WEBHOOK_URL')
        text = STARTER[kind].format(secret_line=secret_line)
    elif kind == "amocrm":
        if url is None and interactive:
            url = input("account address (https://SUBDOMAIN.amocrm.ru): ").strip()
        if not url or not url.startswith(("http://", "https://")):
            print("error: give --url https://SUBDOMAIN.amocrm.ru (the account's address)", file=sys.stderr)
            return 2
        secret = args.token
        if secret is None and interactive:
            secret = getpass.getpass("long-lived token (empty: set LIFECYCLE_CRM__ACCESS_TOKEN later; not shown): ").strip() or None
        secret_line = (f"access_token = {_toml_str(secret)}   # a secret: keep this file private" if secret else
                       "# access_token = \"...\"   # better: LIFECYCLE_CRM__ACCESS_TOKEN")
        text = STARTER[kind].format(url=_toml_str(url), secret_line=secret_line)
    else:
        if url is None and interactive:
            url = input("folder with contacts.csv and deals.csv: ").strip()
        if not url:
            print("error: give --url FOLDER (the folder holding contacts.csv and deals.csv)", file=sys.stderr)
            return 2
        text = STARTER[kind].format(url=_toml_str(url))
    if secret:
        from connector.logs import register_secrets

        register_secrets([secret])
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    out.print(f"wrote {target} ({kind})" + (" with the secret you gave (not shown; the file is readable by you only)"
                                             if secret else ""), markup=False)
    out.print(f"next: lifecycle check --config {target}", markup=False)
    return 0


# -- sandbox --print-env ----------------------------------------------------------------------------

def env_lines(system: str, info: dict[str, Any]) -> list[str]:
    """``export LIFECYCLE_...=`` lines for a sandbox's credentials (its first-line JSON)."""
    def export(name: str, value: Any) -> str:
        return f"export LIFECYCLE_{name}={shlex.quote(str(value))}"

    lines = [f"# lifecycle sandbox {system} at {info.get('base_url')}; stop it with Ctrl-C"]
    if system == "bitrix24":
        portal = (info.get("portals") or [info])[0]
        lines += [export("CRM__KIND", "bitrix24"), export("CRM__WEBHOOK_URL", portal["webhook_url"])]
        if info.get("ca_file") or portal.get("ca_file"):
            lines.append(export("CRM__CA_FILE", info.get("ca_file") or portal.get("ca_file")))
    elif system == "amocrm":
        account = (info.get("accounts") or [info])[0]
        lines += [export("CRM__KIND", "amocrm"), export("CRM__BASE_URL", account["base_url"]),
                  export("CRM__ACCESS_TOKEN", account["access_token"])]
    else:
        y, v, g, m = (info.get(k) or {} for k in ("yandex", "vk", "google", "meta"))
        lines += [export("AUDIENCES__YANDEX_URL", y.get("base_url")), export("AUDIENCES__YANDEX_TOKEN", y.get("token")),
                  export("AUDIENCES__VK_URL", v.get("base_url")), export("AUDIENCES__VK_CLIENT_ID", v.get("client_id")),
                  export("AUDIENCES__VK_CLIENT_SECRET", v.get("client_secret")),
                  export("AUDIENCES__GOOGLE_URL", g.get("base_url")),
                  export("AUDIENCES__GOOGLE_ACCESS_TOKEN", g.get("access_token")),
                  export("AUDIENCES__META_URL", m.get("base_url")), export("AUDIENCES__META_ACCESS_TOKEN", m.get("access_token")),
                  f"# google: user_list_id {g.get('user_list_id')}, operating_account_id {g.get('operating_account_id')}; "
                  f"meta: ad_account_id {m.get('ad_account_id')}"]
    return lines


def serve_sandbox_printing_env(system: str, argv: list[str]) -> int:
    """``lifecycle sandbox SYSTEM --print-env ...``: serve it, printing export lines instead of the JSON line."""
    def show(info: dict[str, Any]) -> None:
        print("\n".join(env_lines(system, info)), flush=True)

    if system == "ads":
        from sandbox.ads.cli import main as serve
    elif system == "amocrm":
        from sandbox.amocrm.cli import main as serve  # type: ignore[no-redef]
    else:
        from sandbox.bitrix24.cli import main as serve  # type: ignore[no-redef]
    return serve(argv, on_info=show)

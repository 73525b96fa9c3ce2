"""The ``lifecycle`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import date

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a fast --help)
if TYPE_CHECKING:  # loaded when a command runs, not for --help (docs/benchmarks.md: fast start)
    from rich.console import Console

EXIT_USAGE = 2
EXIT_LOCKED = 3  # another sync of the portal holds its lock


def _as_of(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date; use YYYY-MM-DD") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifecycle", description="Lifecycle segments for existing CRMs.")
    from connector.cli_help import add_global_options, finish_parser

    parser.add_argument("--version", action=_VersionAction)
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, help="TOML config file (default: $LIFECYCLE_CONFIG, else ./lifecycle.toml, "
                       "else the LIFECYCLE_* environment alone)")

    demo = sub.add_parser("demo", help="run a full cycle on a generated sample base and print the result")
    demo.add_argument("--customers", type=int, default=3000, help="contacts in the sandbox portal (default 3000)")
    demo.add_argument("--keep", metavar="DIR", help="keep the demo's files (CSV, config, state) in DIR")
    demo.add_argument("--no-serve", action="store_true",
                      help="exit after printing the dashboard's URL (default in a terminal: serve it until Ctrl-C)")

    sandbox = sub.add_parser("sandbox", help="serve an emulator on loopback for manual trials (never a live system)")
    sandbox.add_argument("system", choices=("bitrix24", "amocrm", "ads"), help="which emulator")
    sandbox.add_argument("args", nargs=argparse.REMAINDER, help="its options, e.g. --port 8024 --generate 2000:6000; "
                         "--print-env: print export lines for its credentials")

    sync = sub.add_parser("sync", help="pull into the mirror, compute today's membership, store who entered and left")
    with_config(sync)
    sync.add_argument("--format", choices=("table", "json"), default="table")
    sync.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                      help="if another sync of this portal is running, wait up to SECONDS for it (default 0: exit 3)")

    run = sub.add_parser("run", help="daemon: sync on the schedule and on CRM webhooks; health, metrics")
    with_config(run)
    run.add_argument("--port", type=int, help="HTTP port for health, metrics and webhooks (default [daemon] port)")
    run.add_argument("--state-url", metavar="URL", help="many-portal mode: serve /status and every registry portal's "
                     "webhooks from this PostgreSQL (syncs run in `lifecycle worker`); no --config")
    run.add_argument("--portals-dir", metavar="DIR", help="with --state-url: first import this folder of portal "
                     "files (one TOML per portal, name = file stem), as `lifecycle portals sync-dir`")

    worker = sub.add_parser("worker", help="many-portal mode: run syncs of the registry's portals (procrastinate jobs)")
    worker.add_argument("--state-url", metavar="URL", help="the PostgreSQL of the portal registry "
                        "(default $LIFECYCLE_STATE_URL)")
    worker.add_argument("--concurrency", type=int, default=4, metavar="N", help="syncs run at once (default 4)")
    worker.add_argument("--tick", type=int, metavar="SECONDS", help="dispatcher and stalled-job sweep period "
                        "(default 60)")
    worker.add_argument("--stalled-after", type=float, metavar="SECONDS", help="a job whose worker has not "
                        "heart-beaten for this long is retried (default 30)")
    worker.add_argument("--name", help="worker name in logs and in procrastinate's tables")

    plan = sub.add_parser("plan", help="the campaign actions the next sync would take (and skip), writing nothing")
    with_config(plan)
    plan.add_argument("--format", choices=("table", "json"), default="table")
    plan.add_argument("--pull", action="store_true", help="pull from the CRM into the mirror first (a first plan always "
                      "does); nothing is written to the CRM")
    sync.add_argument("--dry-run", action="store_true", help="pull and plan, print the plan, write nothing to the CRM")
    campaigns = sub.add_parser("campaigns", help="campaign approval: a new campaign's first batch waits for it")
    campaigns_sub = campaigns.add_subparsers(dest="campaigns_command", required=True)
    approve = campaigns_sub.add_parser("approve", help="release the waiting actions of a campaign; later batches go at once")
    with_config(approve)
    approve.add_argument("name", help="the [[campaign]] name")

    report = sub.add_parser("report", help="segment sizes, the 9-cell matrix and the KPI, from the mirror")
    with_config(report)
    report.add_argument("--as-of", type=_as_of, help="compute for this date (YYYY-MM-DD); default today")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.add_argument("--members", action="store_true", help="also list the member ids of each segment")
    report.add_argument("--segment", metavar="NAME", help="only this segment (and list its members)")
    report.add_argument("--flows", nargs=2, metavar=("FROM", "TO"),
                        help="who moved between matrix cells (and from prospect) between two dates, from stored membership")
    report.add_argument("--trend", action="store_true", help="the active-base KPI over time, computed from the mirror")
    report.add_argument("--from", dest="from_date", metavar="D", help="--trend: first date (default a year before --to)")
    report.add_argument("--to", dest="to_date", metavar="D", help="--trend: last date (default today)")
    report.add_argument("--every", choices=("week", "day"), default="week", help="--trend: one point per week or day")
    report.add_argument("--campaigns", action="store_true",
                        help="per campaign: contacted vs holdout customers, share who bought, revenue, uplift with 95%% CI")
    report.add_argument("--days", type=int, metavar="N", help="--campaigns: only entries of the last N days")

    users = sub.add_parser("users", help="dashboard accounts: add, list, remove")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    users_add = users_sub.add_parser("add", help="create or update an account (the password is asked, or read from stdin)")
    users_add.add_argument("email")
    users_add.add_argument("--role", choices=("admin", "viewer"), required=True)
    users_add.add_argument("--portal", action="append", metavar="P", help="a portal a viewer may see (repeatable)")
    users_add.add_argument("--language", choices=("ru", "en"), help="the account's language (default [ui] language)")
    users_add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    with_config(users_add)
    with_config(users_sub.add_parser("list", help="the accounts (never their passwords)"))
    users_remove = users_sub.add_parser("remove", help="delete an account")
    users_remove.add_argument("email")
    with_config(users_remove)

    from connector.model_cli import add_model_parser

    add_model_parser(sub, with_config, _as_of)

    init = sub.add_parser("init", help="write a commented starter config (asks for the CRM kind and URL)")
    init.add_argument("--kind", choices=("bitrix24", "amocrm", "csv"), help="which CRM")
    init.add_argument("--url", help="bitrix24: the inbound webhook URL (a secret); amocrm: the account address; "
                      "csv: the folder")
    init.add_argument("--token", help="amocrm: the long-lived token (a secret; better typed at the prompt)")
    init.add_argument("-o", "--output", default="lifecycle.toml", help="file to write (default lifecycle.toml)")
    init.add_argument("--force", action="store_true", help="overwrite the file if it exists")
    check = sub.add_parser("check", help="check config, CRM access and scopes, pipelines, users, cabinets; no write")
    with_config(check)
    config_cmd = sub.add_parser("config", help="show the effective settings and where each came from")
    config_sub = config_cmd.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="effective settings with their source (file, env, default)")
    with_config(show)
    show.add_argument("--format", choices=("table", "json"), default="table")
    runs = sub.add_parser("runs", help="history of runs with per-record errors")
    with_config(runs)
    runs.add_argument("--failed", action="store_true", help="only runs that failed")
    runs.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")
    runs.add_argument("--format", choices=("table", "json"), default="table")
    members = sub.add_parser("members", help="members of a segment: names, phones, e-mails, responsible, key features")
    with_config(members)
    members.add_argument("segment", metavar="SEGMENT", help="segment name, e.g. lifecycle.regular_active")
    members.add_argument("--format", choices=("table", "csv", "json"), default="table")
    from connector.portals_cli import add_parsers as add_portals_parsers

    add_portals_parsers(sub)  # portals ..., secrets ... (the portal registry)
    from connector.apps.amocrm_widget import add_parser as add_amocrm_parser

    add_amocrm_parser(sub)  # lifecycle amocrm widget (issue 15)
    from connector.apps.b24_cli import add_parser as add_apps_parser

    add_apps_parser(sub)  # lifecycle apps bitrix24 add-credentials ... (several local applications)
    return finish_parser(parser)


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked (importlib.metadata costs a fast start)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(f"{parser.prog} {_version()}")  # on stdout, as argparse's own version action does
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crm-lifecycle")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
        return "unknown"


def _verbose_flag(argv: list[str]) -> bool:
    """-v/--verbose/--debug given to lifecycle itself (not to the sandbox's own options)."""
    cut = argv.index("sandbox") if "sandbox" in argv else len(argv)
    return any(a in ("-v", "--verbose", "--debug") for a in argv[:cut])


def main(argv: list[str] | None = None) -> int:
    """Run a command. Whatever fails ends as one redacted line ``error: ...`` on stderr (exit 2 for a
    configuration to fix, 1 for a failure at run time), never a raw traceback (``-v`` adds a redacted one)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place every other failure becomes one line
        from connector import logs

        if _verbose_flag(argv):
            import traceback

            print(logs.redact("".join(traceback.format_exception(exc))).rstrip(), file=sys.stderr)
        print(f"error: {logs.safe_error(exc)}", file=sys.stderr)
        return 1


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    from adapters.csv_files import SourceError
    from connector import logs
    from connector.config import ConfigError, load_config
    from connector.synclock import LockLost, SyncLocked

    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logs.setup(None if args.log_format is None else args.log_format == "json", level)  # secrets redacted
    logs.register_env_secrets()
    out = Console(soft_wrap=False, width=max(Console().width, 110))
    try:
        if args.command == "demo":
            import importlib.util

            if importlib.util.find_spec("numpy") is None:
                print("error: lifecycle demo needs the demo extra: pip install 'crm-lifecycle[demo]' "
                      "(in a container: the Dockerfile's demo target)", file=sys.stderr)
                return EXIT_USAGE
            from connector.demo import run_demo

            return run_demo(out, customers=args.customers, keep=args.keep, serve=False if args.no_serve else None)
        if args.command == "init":
            from connector.cli_tools import init_command

            return init_command(args, out)
        if args.command == "sandbox":
            if "--print-env" in args.args:
                from connector.cli_tools import serve_sandbox_printing_env

                return serve_sandbox_printing_env(args.system, [a for a in args.args if a != "--print-env"])
            if args.system == "ads":
                from sandbox.ads.cli import main as ads_sandbox

                return ads_sandbox(args.args)
            if args.system == "amocrm":
                from sandbox.amocrm.cli import main as amocrm_sandbox

                return amocrm_sandbox(args.args)
            from sandbox.bitrix24.cli import main as bitrix24_sandbox

            return bitrix24_sandbox(args.args)
        if args.command == "amocrm":
            from connector.apps.amocrm_widget import widget_command

            return widget_command(args, out)
        if args.command == "apps":
            from connector.apps.b24_cli import apps_command

            return apps_command(args, out)
        if args.command == "model":
            from connector.model_cli import run_model

            return run_model(args, out)
        if args.command == "worker" or (args.command == "run" and args.state_url):
            from connector.many_cli import many_portal_command

            return many_portal_command(args)
        if args.command in ("portals", "secrets"):
            from connector.portals_cli import run as run_portals

            return run_portals(args, out)
        config = load_config(args.config)
        logs.register_secrets(logs.secrets_of(config.settings))
        if args.command == "sync":
            if args.dry_run:
                return _plan(config, args, out, pull=True)
            return _sync(config, args, out)
        if args.command == "campaigns":
            return _campaigns(config, args, out)
        if args.command == "report":
            return _report(config, args, out)
        if args.command == "plan":
            return _plan(config, args, out)
        if args.command == "users":
            from connector.dashboard.commands import users

            return users(config, args, out)
        if args.command in ("check", "config", "runs", "members"):
            from connector import cli_tools

            if args.command == "check":
                return cli_tools.check_command(config, out)
            if args.command == "config":
                return cli_tools.config_show(config, out, args.format)
            if args.command == "runs":
                return cli_tools.runs_command(config, out, failed=args.failed, limit=args.limit, fmt=args.format)
            return cli_tools.members_command(config, out, args.segment, args.format)
        if args.command == "run":
            from connector.daemon import Daemon

            return Daemon(config, port=args.port).run()
    except (ConfigError, SourceError) as exc:
        print(f"error: {logs.redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (SyncLocked, LockLost) as exc:
        print(exc, file=sys.stderr)
        return EXIT_LOCKED
    except Exception as exc:
        if not _crm_error(exc):
            raise
        print(f"error: {logs.redact(str(exc))}", file=sys.stderr)
        return 1
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands


def _crm_error(exc: BaseException) -> bool:
    """A BitrixError or AmoError, without importing the CRM clients: a client never loaded raised nothing."""
    for module, name in (("adapters.bitrix24.client", "BitrixError"), ("adapters.amocrm.client", "AmoError")):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


def _sync(config, args, out: Console) -> int:
    import json

    from connector.logs import redact
    from connector.pipeline import sync

    from rich.console import Console

    from connector.progress import for_output

    with for_output(Console(stderr=True), quiet=args.quiet) as progress:
        result = sync(config, wait=args.wait, progress=progress)
    summary = result.summary()
    if args.format == "json":
        print(redact(json.dumps(summary, ensure_ascii=False)))
        return _audiences_verdict(summary)
    out.print(
        f"sync run {result.run_id} on {summary['as_of']}: {summary['customers']} customers, {summary['deals']} deals, "
        f"{summary['rows_skipped']} rows skipped, {summary['deals_without_customer']} deals without a customer"
    )
    if summary.get("pull_requests"):
        out.print(
            f"pull ({summary['pull']}): {summary['customers_upserted']} customers and {summary['deals_upserted']} deals read, "
            f"{summary['customers_deleted']} + {summary['deals_deleted']} deleted, {summary['pull_requests']} requests"
        )
    if "tags_updated" in summary:
        out.print(
            f"write-back: {summary['tags_updated']} customers updated, {summary['tags_failed']} failed, "
            f"{summary.get('writeback_requests', 0)} requests"
        )
    if "actions_created" in summary:
        out.print(
            f"campaigns: {summary['actions_planned']} actions planned, {summary['actions_skipped']} skipped, "
            f"{summary['actions_created']} created, {summary['actions_recovered']} found from an interrupted run, "
            f"{summary['actions_failed']} failed, {summary['action_requests']} requests"
        )
    for a in summary.get("audiences", []):  # type: ignore[union-attr]
        line = (f"audience {a['name']!r} ({a['cabinet']}): {a['matchable']} matchable, +{a['added']} -{a['removed']}"
                f", {a['unmatchable']} without a valid e-mail or phone, status {a['status'] or '-'}")
        out.print(redact(line + (f"; {a['message']}" if a["message"] else "")), markup=False)
    pred = summary.get("predictions")
    if isinstance(pred, dict):
        from connector.predictions import summary_line

        out.print(summary_line(pred))
    names = sorted(set(summary["entered"]) | set(summary["left"]))  # type: ignore[arg-type]
    if not names:
        out.print("no customer entered or left a segment")
    for name in names:
        out.print(f"  {name}: +{summary['entered'].get(name, 0)} entered, -{summary['left'].get(name, 0)} left")  # type: ignore[union-attr]
    return _audiences_verdict(summary)


def _audiences_verdict(summary: dict) -> int:
    """Exit 1 when every audience failed on credentials: the run did nothing the operator asked for."""
    from connector.audiences import all_refused_credentials
    from connector.logs import redact

    audiences = summary.get("audiences") or []
    if all_refused_credentials(audiences):
        cabinets = ", ".join(sorted({a["cabinet"] for a in audiences}))
        print(redact(f"error: every audience failed: the cabinet ({cabinets}) refused the credentials; "
                     "check the tokens in [audiences]"), file=sys.stderr)
        return 1
    return 0


def _campaigns(config, args, out: Console) -> int:
    from connector.config import ConfigError
    from connector.pipeline import open_store

    names = [c.name for c in config.settings.campaign]
    if args.name not in names:
        raise ConfigError(f"campaign {args.name!r} is not in the config; campaigns: {', '.join(names) or 'none'}")
    store = open_store(config)
    try:
        released = store.approve_campaign(args.name)
    finally:
        store.close()
    out.print(f"campaign {args.name!r} approved: {released} waiting actions will be sent by the next sync; "
              "its later batches are sent without asking")
    return 0


STATE_NOTES = {"waiting": "waits for approval (lifecycle campaigns approve {campaign})",
               "holdout": "holdout group: no action, recorded for the report"}


def _plan(config, args, out: Console, pull: bool | None = None) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from connector.pipeline import preview_plan
    from connector.progress import for_output

    with for_output(Console(stderr=True), quiet=args.quiet) as progress:
        rows = preview_plan(config, pull=True if (pull or getattr(args, "pull", False)) else None, progress=progress)
    if args.format == "json":
        print(json.dumps([{k: r[k] for k in ("campaign", "action", "customer_id", "key", "skip_reason")} for r in rows],
                         ensure_ascii=False))
        return 0
    counts: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        c = counts.setdefault((r["campaign"], r["action"]), [0, 0, 0, 0])
        waiting = r.get("status") == "waiting"
        c[3 if waiting else 0 if r["origin"] == "new" and not r["skip_reason"] else 1 if r["skip_reason"] else 2] += 1
    summary = Table(title="Campaign plan: actions the next sync would take")
    for col in ("campaign", "action", "to create", "skipped", "pending from earlier runs", "waiting for approval"):
        summary.add_column(col, justify="left" if col in ("campaign", "action") else "right")
    for (campaign, action), (new, skipped, pending, waiting) in sorted(counts.items()):
        summary.add_row(campaign, action, str(new), str(skipped), str(pending), str(waiting))
    out.print(summary if counts else "no campaign action is due")
    if any(r.get("status") == "waiting" for r in rows):
        for name in sorted({r["campaign"] for r in rows if r.get("status") == "waiting"}):
            out.print(f"campaign {name!r} is new: its actions wait for `lifecycle campaigns approve {name}` "
                      "(or auto_approve = true)", markup=False, soft_wrap=True)
    for c in config.settings.campaign:
        if c.include_current_members:
            n = sum(1 for r in rows if r["campaign"] == c.name and r.get("existing_member"))
            out.print(f"campaign {c.name!r}: include_current_members = true, {n} actions for customers already in "
                      f"{c.segment} (once)", markup=False, soft_wrap=True)
    from connector.cli_tools import salesbot_notes  # issue 18: is each Salesbot run exactly once?

    for line in salesbot_notes(config):
        out.print(line, markup=False, soft_wrap=True)
    if rows:
        detail = Table(title="Actions")
        for col in ("campaign", "action", "customer", "responsible", "title", "due", "skip reason / state"):
            detail.add_column(col)
        for r in rows:
            note = STATE_NOTES.get(str(r.get("status")), "").format(campaign=r["campaign"]) or r["skip_reason"] or (
                "" if r["origin"] == "new" else f"pending ({r['origin']})")
            if r.get("existing_member"):
                note = (note + "; " if note else "") + "already a member (include_current_members)"
            customer = f"{r['customer_name']} ({r['customer_id']})" if r.get("customer_name") else str(r["customer_id"])
            rep = r["responsible_id"]
            rep_text = f"{r['responsible_name']} ({rep})" if rep and r.get("responsible_name") else str(rep or "")
            detail.add_row(r["campaign"], r["action"], customer, rep_text, r["title"], r["due"], note)
        out.print(detail, markup=False)
    return 0


def _report(config, args, out: Console) -> int:
    from connector import report
    from connector.pipeline import compute, open_store, today_in

    from connector.config import ConfigError

    if args.campaigns:
        from connector.campaign_report import report_command

        return report_command(config, args, out)
    if args.flows or args.trend:
        from connector.dashboard import commands

        return commands.report_flows(config, args, out) if args.flows else commands.report_trend(config, args, out)
    names = config.rules.segment_names
    if args.segment and args.segment not in names:
        import difflib

        close = difflib.get_close_matches(args.segment, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"--segment {args.segment!r}: no such segment{hint}; known: {', '.join(names)}")
    as_of = args.as_of or today_in(config.crm.timezone)
    store = open_store(config)
    try:
        from connector import stored_report

        comp = None if (args.members or args.segment) else stored_report.load(store, config, as_of)
        if comp is None:  # not the date a sync stored (or it cannot be used): compute from the mirror
            if not args.quiet:
                print(f"computing segments for {as_of} from the mirror...", file=sys.stderr)
            comp = compute(store, config, as_of)
        else:
            for warning in comp.stats.field_warnings:  # as the computation logs them
                logging.getLogger("lifecycle.pipeline").warning("%s", warning)
    finally:
        store.close()
    if comp.customers == 0:
        print(f"note: the mirror holds no customers of {config.crm.name!r}; run `lifecycle sync` first", file=sys.stderr)
    segments = [args.segment] if args.segment else names
    members = args.members or bool(args.segment)
    if args.format == "json":
        print(report.as_json(comp, segments=segments, members=members))
    elif args.format == "csv":
        sys.stdout.write(report.as_csv(comp, segments=segments, members=members))
    else:
        report.render_table(comp, config.settings, segments=segments, members=members, console=out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

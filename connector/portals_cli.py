"""``lifecycle portals ...`` (the portal registry of a many-portal deployment) and ``lifecycle secrets ...``
(the key that encrypts secrets in the state store). connector/cli.py registers both with
:func:`add_parsers` and runs them with :func:`run`.

The registry's database is ``--state-url`` or ``LIFECYCLE_STATE_URL`` (``LIFECYCLE_STATE_URL_FILE`` too);
its secret key ``LIFECYCLE_SECRET_KEY`` or ``LIFECYCLE_SECRET_KEY_FILE`` (connector/crypto.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from connector.config import ConfigError
from connector.registry import read_config_file as _read

STATE_URL_VAR = "LIFECYCLE_STATE_URL"

HELP: dict[str, tuple[str, str]] = {
    "portals": ("The portal registry of a many-portal deployment: every portal's config (encrypted when "
                "LIFECYCLE_SECRET_KEY is set), state and last runs, in the shared state store (--state-url or "
                "LIFECYCLE_STATE_URL).", "lifecycle portals list --state-url postgresql+psycopg://lc@db/lifecycle"),
    "portals add": ("Register a portal from its TOML file (the same file a single-portal deployment reads, "
                    "validated the same way); --replace updates an existing portal's config.",
                    "lifecycle portals add acme --config portals/acme.toml"),
    "portals list": ("Every portal: name, CRM kind, state, failures in a row, last run, next run, last error.",
                     "lifecycle portals list --format json"),
    "portals show": ("One portal: its state and its settings, secrets masked.", "lifecycle portals show acme"),
    "portals pause": ("Stop syncing a portal until `portals resume`; its data stays.", "lifecycle portals pause acme"),
    "portals resume": ("Sync a paused or failing portal again (clears its failure count).",
                       "lifecycle portals resume acme"),
    "portals remove": ("Take a portal out of the registry; its data stays (adding it again brings it back) until "
                       "--purge deletes every row of it in every table.", "lifecycle portals remove acme --purge"),
    "portals import-state": ("Move a single-portal deployment into the registry: registers the portal from its "
                             "config file and copies everything its SQLite state holds (mirror, membership "
                             "history, action ledger, runs, cursors, OAuth tokens, audiences, dashboard history). "
                             "The source is left as it was.",
                             "lifecycle portals import-state acme --config /srv/acme/lifecycle.toml"),
    "portals sync-dir": ("Import a folder of portal files (one TOML per portal, name = file stem): new portals are "
                         "added, changed ones updated, others left alone; a bad file is reported and skipped.",
                         "lifecycle portals sync-dir ./portals"),
    "secrets": ("The key that encrypts secrets in the state store (portal configs, OAuth tokens).",
                "lifecycle secrets new-key > secret.key"),
    "secrets new-key": ("Print a new random key for LIFECYCLE_SECRET_KEY (keep it in a secret store; without it "
                        "the encrypted secrets cannot be read).", "lifecycle secrets new-key > /run/secrets/lifecycle_key"),
    "secrets rotate": ("Re-encrypt every secret in the state store with a new key (the current one is "
                       "LIFECYCLE_SECRET_KEY; none when the store is not encrypted yet). Afterwards start every "
                       "process with the new key.", "lifecycle secrets rotate --new-key-file new.key"),
}


def add_parsers(sub: Any) -> None:
    """The ``portals`` and ``secrets`` commands, on the top-level subparsers of connector/cli.py."""
    from connector import cli_help

    cli_help.HELP.update(HELP)

    def with_url(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-url", metavar="URL", help=f"the shared state store (default ${STATE_URL_VAR})")
        p.add_argument("--portals-dir", metavar="DIR", help="first import this folder of portal files (as sync-dir)")

    portals = sub.add_parser("portals", help="the portal registry: add, list, show, pause, resume, remove, import-state")
    psub = portals.add_subparsers(dest="portals_command", required=True)
    add = psub.add_parser("add", help="register a portal from its TOML config")
    add.add_argument("name", help="the portal's name: lower-case letters, digits, - and _")
    add.add_argument("--config", required=True, metavar="FILE", help="the portal's TOML config")
    add.add_argument("--replace", action="store_true", help="replace the config of an existing portal")
    with_url(add)
    lst = psub.add_parser("list", help="every portal with its state and runs")
    lst.add_argument("--format", choices=("table", "json"), default="table")
    with_url(lst)
    show = psub.add_parser("show", help="one portal's state and settings (secrets masked)")
    show.add_argument("name")
    show.add_argument("--format", choices=("table", "json"), default="table")
    with_url(show)
    for verb, text in (("pause", "stop syncing a portal"), ("resume", "sync a paused or failing portal again")):
        p = psub.add_parser(verb, help=text)
        p.add_argument("name")
        with_url(p)
    remove = psub.add_parser("remove", help="remove a portal (its data stays until --purge)")
    remove.add_argument("name")
    remove.add_argument("--purge", action="store_true", help="also delete all of its data")
    with_url(remove)
    imp = psub.add_parser("import-state", help="move a single-portal SQLite deployment into the registry")
    imp.add_argument("name")
    imp.add_argument("--config", required=True, metavar="FILE", help="the single-portal config ([state] url: its store)")
    with_url(imp)
    sdir = psub.add_parser("sync-dir", help="import a folder of portal files (name = file stem)")
    sdir.add_argument("dir", metavar="DIR")
    with_url(sdir)

    secrets = sub.add_parser("secrets", help="the key encrypting secrets in the state store: new-key, rotate")
    ssub = secrets.add_subparsers(dest="secrets_command", required=True)
    ssub.add_parser("new-key", help="print a new key")
    rotate = ssub.add_parser("rotate", help="re-encrypt every stored secret with a new key")
    rotate.add_argument("--new-key-file", required=True, metavar="FILE", help="file holding the new key")
    rotate.add_argument("--state-url", metavar="URL", help=f"the state store (default ${STATE_URL_VAR})")


def state_url(args: argparse.Namespace) -> str:
    from connector import logs
    from connector.envfiles import EnvFileError, expand_secret_files

    try:
        expand_secret_files()
    except EnvFileError as exc:
        raise ConfigError(str(exc)) from None
    url = getattr(args, "state_url", None) or next((v for k, v in os.environ.items() if k.upper() == STATE_URL_VAR and v), None)
    if not url:
        raise ConfigError(f"no state store: pass --state-url URL or set {STATE_URL_VAR} (a PostgreSQL URL "
                          "postgresql+psycopg://..., or sqlite:///portals.db)")
    if (m := re.match(r"^[^:]+://[^:/@]*:([^@]+)@", url)):
        logs.register_secrets([m.group(1)])
    return url


def one_line(text: str) -> str:
    """A configuration's list of problems on one line: ``FILE: invalid configuration: a: ...; b: ...``."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " ".join(lines[:1] + ["; ".join(lines[1:])]) if len(lines) > 1 else (lines[0] if lines else "")


def run(args: argparse.Namespace, out: Any) -> int:
    """Run ``portals ...`` / ``secrets ...``; a ConfigError leaves as one line (cli.py prints it, exit 2)."""
    try:
        return _run(args, out)
    except ConfigError as exc:
        exc.args = (one_line(str(exc)),)
        raise


def _run(args: argparse.Namespace, out: Any) -> int:
    if args.command == "secrets":
        return _secrets(args, out)
    from connector.registry import Registry

    registry = Registry.open(state_url(args))
    try:
        if args.portals_dir and args.portals_command != "sync-dir":
            code = sync_dir(registry, Path(args.portals_dir), out)
            if code:
                return code
        command = args.portals_command
        if command == "add":
            path = Path(args.config)
            portal = registry.add(args.name, _read(path), replace=args.replace, base_dir=path.resolve().parent, origin=path)
            print(f"portal {portal.name!r} ({portal.kind}) {'updated' if args.replace else 'added'}, state {portal.state}")
            _warn_unencrypted()
            return 0
        if command == "list":
            return _list(registry, args.format, out)
        if command == "show":
            return _show(registry, args.name, args.format, out)
        if command == "pause":
            registry.set_state(args.name, "paused")
            print(f"portal {args.name!r} paused")
            return 0
        if command == "resume":
            registry.set_state(args.name, "active")
            print(f"portal {args.name!r} active")
            return 0
        if command == "remove":
            registry.remove(args.name, purge=args.purge)
            print(f"portal {args.name!r} removed and its data deleted" if args.purge else
                      f"portal {args.name!r} removed; its data stays until `lifecycle portals remove {args.name} --purge`")
            return 0
        if command == "import-state":
            from connector.portal_import import import_state

            counts = import_state(registry, args.name, Path(args.config))
            moved = ", ".join(f"{table} {n}" for table, n in counts.items() if n)
            print(f"portal {args.name!r}: imported {moved or 'no rows (the source store is empty)'}")
            _warn_unencrypted()
            return 0
        if command == "sync-dir":
            return sync_dir(registry, Path(args.dir), out)
    finally:
        registry.close()
    return 2  # pragma: no cover - argparse requires a command


def _warn_unencrypted() -> None:
    from connector import crypto

    if crypto.current_key() is None:
        print(f"warning: no {crypto.KEY_VAR}: the portal's secrets are stored unencrypted; make a key with "
              "`lifecycle secrets new-key` and run `lifecycle secrets rotate --new-key-file FILE`", file=sys.stderr)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def _list(registry: Any, fmt: str, out: Any) -> int:
    portals = registry.list()
    if fmt == "json":
        print(json.dumps([{"name": p.name, "kind": p.kind, "state": p.state, "failures": p.failures,
                           "last_run_at": p.last_run_at.isoformat() if p.last_run_at else None,
                           "next_run_at": p.next_run_at.isoformat() if p.next_run_at else None,
                           "last_error": p.last_error} for p in portals], ensure_ascii=False))
        return 0
    if not portals:
        print("no portal registered; add one with `lifecycle portals add NAME --config FILE`")
        return 0
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Portals")
    for col in ("name", "kind", "state", "failures", "last run", "next run", "last error"):
        table.add_column(col, overflow="fold")
    for p in portals:
        table.add_row(*map(Text, (p.name, p.kind, p.state, str(p.failures), _when(p.last_run_at), _when(p.next_run_at),
                                  p.last_error or "")))
    out.print(table)
    return 0


def _show(registry: Any, name: str, fmt: str, out: Any) -> int:
    from connector.cli_tools import effective_settings

    portal = registry.get(name)
    loaded = registry.load(name)
    data = tomllib.loads(registry.config_text(name))
    rows = []
    for key, shown, _source in effective_settings(loaded):  # secrets masked there
        node: Any = data
        for part in key.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        source = "registry" if key in ("crm.name", "state.url") else "file" if node is not KeyError else "default"
        rows.append((key, shown, source))
    head = {"name": portal.name, "kind": portal.kind, "state": portal.state, "failures": portal.failures,
            "last_run_at": _when(portal.last_run_at), "next_run_at": _when(portal.next_run_at),
            "last_error": portal.last_error or ""}
    if fmt == "json":
        print(json.dumps({**head, "settings": [{"key": k, "value": v, "source": s} for k, v, s in rows]},
                         ensure_ascii=False))
        return 0
    from rich.table import Table
    from rich.text import Text

    for key, value in head.items():
        print(f"{key}: {value}")
    table = Table(title=f"Settings of portal {name!r}")
    for col in ("key", "value", "source"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*map(Text, row))
    out.print(table)
    return 0


def sync_dir(registry: Any, folder: Path, out: Any) -> int:
    """``portals sync-dir`` / ``--portals-dir``: Registry.sync_dir, then what it did; exit 2 if a file was bad."""
    result = registry.sync_dir(folder)
    print(f"portals from {folder}: {len(result.added)} added, {len(result.updated)} updated, "
          f"{len(result.unchanged)} unchanged, {len(result.errors)} with errors")
    for line in result.errors:
        print(f"error: {line}", file=sys.stderr)
    if result.added or result.updated:
        _warn_unencrypted()
    return 2 if result.errors else 0


def _secrets(args: argparse.Namespace, out: Any) -> int:
    from connector import crypto

    if args.secrets_command == "new-key":
        print(crypto.new_key())
        return 0
    new_key = _read(Path(args.new_key_file)).strip()
    if not new_key:
        raise ConfigError(f"{args.new_key_file} is empty; write a key made by `lifecycle secrets new-key` into it")
    count = rotate(state_url(args), new_key)
    print(f"re-encrypted {count} secrets with the new key; start every process with {crypto.KEY_VAR} set to it "
              "(the old key no longer opens this store)")
    return 0


def rotate(url: str, new_key: str) -> int:
    """Re-encrypt every secret of the store at ``url`` with ``new_key``; the current key (if any) decrypts."""
    from connector import crypto
    from connector.registry import reencrypt, vacuum
    from connector.store import StateStore
    from connector.store.base import write_lock

    new = crypto.cipher_for(new_key, "--new-key-file")
    if "," in new_key:
        raise ConfigError("--new-key-file: give one key (the current one comes from LIFECYCLE_SECRET_KEY)")
    old_key = crypto.current_key()
    both = crypto.cipher_for(",".join([new_key] + ([old_key] if old_key else [])))
    saved = list(crypto._explicit)
    # the store's check opens with the current key (or the new one, after an interrupted rotation)
    crypto.configure(",".join([new_key] + ([old_key] if old_key else [])))
    try:
        store = StateStore.open(url, "")
        try:
            with store.engine.begin() as conn:
                write_lock(conn)
                count = reencrypt(conn, decrypt_with=both, encrypt_with=new)
            vacuum(store.engine)
            return count
        finally:
            store.close()
    finally:
        crypto._explicit[:] = saved

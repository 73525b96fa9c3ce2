"""``lifecycle apps bitrix24 add-credentials | list-credentials | remove-credentials``: the Bitrix24
application pairs kept in the registry, encrypted with ``LIFECYCLE_SECRET_KEY`` (connector/apps/b24_credentials.py).

The secret is read from a file or standard input (``--client-secret-file -``), never from the command line
(where ``ps`` and the shell history would show it). Adding a pair that installed portals already record
under another secret (the application's key was regenerated) updates their configs too, so their next
token refresh uses the new one. Nothing printed contains a secret.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


EXAMPLE = "lifecycle apps bitrix24 add-credentials --client-id local.6650a1b2c3d4e5.12345678 --client-secret-file -"
HELP = {
    "apps": ("CRM application tools: the credentials of the Bitrix24 applications this deployment serves.", EXAMPLE),
    "apps bitrix24": ("The client_id/client_secret pairs of the Bitrix24 applications (a local application per "
                      "portal), kept in the registry encrypted with LIFECYCLE_SECRET_KEY; the service reads them at "
                      "every installation.", EXAMPLE),
}


def add_parser(sub: Any) -> None:
    """``lifecycle apps bitrix24 ...``'s arguments (kept here so cli.py stays small)."""
    from connector import cli_help

    cli_help.HELP.update(HELP)
    apps = sub.add_parser("apps", help="CRM application tools: the Bitrix24 applications' credentials")
    apps_sub = apps.add_subparsers(dest="apps_crm", required=True)
    b24 = apps_sub.add_parser("bitrix24", help="the client_id/client_secret pairs of the Bitrix24 applications served")
    b24_sub = b24.add_subparsers(dest="apps_command", required=True)

    def with_url(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--state-url", metavar="URL", help="the shared state store (default $LIFECYCLE_STATE_URL)")
        return p

    add = with_url(b24_sub.add_parser("add-credentials", help="store a local application's pair (encrypted)",
                                      description="Store (or replace) an application's pair, the secret encrypted; "
                                                  "installed portals recording that client_id get a replaced secret.",
                                      epilog=f"example: {EXAMPLE}"))
    add.add_argument("--client-id", required=True, help="the application code from the local application form")
    add.add_argument("--client-secret-file", required=True, metavar="FILE",
                     help="a file holding the application key, or - to read it from standard input")
    with_url(b24_sub.add_parser("list-credentials", help="the stored client ids and the portals each serves",
                                description="The stored client ids and the installed portals each serves (never a "
                                            "secret).", epilog="example: lifecycle apps bitrix24 list-credentials"))
    remove = with_url(b24_sub.add_parser("remove-credentials", help="forget a stored pair",
                                         description="Forget a stored pair (portals that record it keep refreshing "
                                                     "with it until re-installed).",
                                         epilog="example: lifecycle apps bitrix24 remove-credentials --client-id "
                                                "local.6650a1b2c3d4e5.12345678"))
    remove.add_argument("--client-id", required=True)


def _secret(path: str) -> str:
    from connector.config import ConfigError

    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as exc:
        raise ConfigError(f"--client-secret-file {path}: cannot read it ({type(exc).__name__})") from None
    secret = text.strip()
    if not secret or len(secret.splitlines()) != 1:
        raise ConfigError(f"--client-secret-file {path}: give one line, the application key from the form")
    return secret


def apps_command(args: argparse.Namespace, out: Any) -> int:
    from connector import logs
    from connector.apps.b24_credentials import ClientPair, check_client_id, remove_pair, store_pair, stored_pairs
    from connector.apps.settings import portals_by_client, update_portal_secrets
    from connector.portals_cli import state_url
    from connector.registry import Registry

    url = state_url(args)
    if args.apps_command == "add-credentials":
        client_id = check_client_id(args.client_id)
        secret = _secret(args.client_secret_file)
        logs.register_secrets([secret])
        registry = Registry.open(url)
        try:
            added = store_pair(registry.engine, ClientPair(client_id, secret))
            updated = update_portal_secrets(registry, client_id, secret)
        finally:
            registry.close()
        out.print(f"{client_id}: {'added' if added else 'replaced'}" +
              (f"; {updated} installed portal(s) now refresh with the new secret" if updated else ""))
        return 0
    registry = Registry.open(url)
    try:
        if args.apps_command == "remove-credentials":
            client_id = args.client_id.strip()
            if not remove_pair(registry.engine, client_id):
                print(f"error: no stored pair has client_id {client_id}", file=sys.stderr)
                return 1
            users = portals_by_client(registry).get(client_id, [])
            out.print(f"{client_id}: removed" + (f" (still recorded by {len(users)} installed portal(s), which keep "
                                              "refreshing with it until re-installed)" if users else ""))
            return 0
        users = portals_by_client(registry)
        pairs = stored_pairs(registry.engine)
        for pair in pairs:
            names = users.get(pair.client_id, [])
            out.print(f"{pair.client_id}\t{len(names)} portal(s)\t{' '.join(names)}".rstrip())
        if not pairs:
            out.print("no stored pairs (add one with `lifecycle apps bitrix24 add-credentials`)")
        return 0
    finally:
        registry.close()


__all__ = ["add_parser", "apps_command"]

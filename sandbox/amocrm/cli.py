"""``lifecycle sandbox amocrm`` / ``python -m sandbox.amocrm``: serve one emulated amoCRM account on loopback.

The first line on stdout is one JSON object (see README.md in this folder): ``base_url``, the long-lived
``access_token``, the OAuth app (``client_id``, ``client_secret``, ``redirect_uri``), a fresh
``authorization_code`` and a ``refresh_token``, ``control_url``, ``timezone``, ``time_scale``, ``limits``
and ``counts``. With ``--accounts N`` (N > 1) it is ``{"base_url", "control_url", "accounts": [<one such
object per account, plus "index">]}``: account i lives under ``/a/{i}`` with its own tokens, OAuth app,
account id, subdomain and data (``--generate`` seeds account i with ``--seed`` + i). Then the process
serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from datetime import date
from pathlib import Path

from .account import Account
from .server import RunningServer


def create_server(*, host: str = "127.0.0.1", port: int = 0, import_csv: str | Path | None = None,
                  generate: tuple[int, int] | None = None, time_scale: float = 1.0, limits: bool = True,
                  timezone: str = "Europe/Moscow", today: date | None = None, seed: int = 7,
                  frozen_clock: bool = False, rate_limit: int | None = None, block_after: int | None = None,
                  subdomain: str = "sandbox", verbose: bool = False, accounts: int | None = None) -> RunningServer:
    """Build, seed and bind an account (not yet serving: call ``.start()`` or ``.serve_forever()``).

    ``accounts=N`` (N > 1) builds N independent accounts served by the one server under ``/a/0`` ..
    ``/a/{N-1}``; account i has subdomain ``{subdomain}{i}``, account id 31415926 + i and is generated with
    ``seed + i`` (``import_csv`` loads the same folder into each).
    """
    from . import seed as seeding

    if import_csv and generate:
        raise ValueError("use either --import-csv or --generate, not both")
    if accounts is not None and accounts < 1:
        raise ValueError("--accounts must be at least 1")
    multi = accounts is not None and accounts > 1
    built: list[Account] = []
    notes: list[str] = []
    for index in range(accounts if multi else 1):
        extra = {"subdomain": f"{subdomain}{index}", "account_id": 31415926 + index} if multi else {"subdomain": subdomain}
        account = Account(timezone_name=timezone, time_scale=time_scale, limits=limits, seed=seed + index,
                          frozen_clock=frozen_clock, rate_limit=rate_limit, block_after=block_after, **extra)
        if import_csv:
            _, problems = seeding.import_csv(account, Path(import_csv))
            if index == 0:
                notes += problems
        elif generate:
            seeding.generate(account, generate[0], generate[1], today=today, seed=seed + index)
        built.append(account)
    server = RunningServer(None if multi else built[0], host=host, port=port, verbose=verbose,
                           accounts=built if multi else None)
    server.notes = notes  # type: ignore[attr-defined]
    return server


def _pair(text: str) -> tuple[int, int]:
    try:
        contacts, deals = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError("expected CONTACTS:DEALS, e.g. 2000:6000") from None
    if contacts < 1 or deals < 0:
        raise argparse.ArgumentTypeError("CONTACTS must be >= 1 and DEALS >= 0")
    return contacts, deals


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number, e.g. 50") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifecycle sandbox amocrm",
                                description="Serve an emulated amoCRM account (API v4) on loopback.")
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port; see the first output line)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--import-csv", metavar="DIR", help="load contacts.csv, deals.csv [, companies.csv, deal_products.csv], keeping ids")
    source.add_argument("--generate", metavar="CONTACTS:DEALS", type=_pair, help="generate a synthetic customer base")
    p.add_argument("--time-scale", type=_positive, default=1.0, help="run limits and token lifetimes X times faster")
    p.add_argument("--no-limits", action="store_true", help="switch off the 7 req/s limit (429) and the 403 block")
    p.add_argument("--rate-limit", type=int, help="requests per second before 429 (default 7)")
    p.add_argument("--block-after", type=int, help="429s within 60 s before every request gets 403 (default 20)")
    p.add_argument("--timezone", default="Europe/Moscow", help="account time zone (default Europe/Moscow)")
    p.add_argument("--today", type=date.fromisoformat, help="'today' for --generate (YYYY-MM-DD)")
    p.add_argument("--seed", type=int, default=7, help="random seed for --generate and probabilistic faults")
    p.add_argument("--subdomain", default="sandbox", help="account subdomain reported by /api/v4/account")
    p.add_argument("--accounts", type=_count, default=1,
                   help="serve N independent accounts from this one process, account i under /a/i (default 1)")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    return p


def main(argv: list[str] | None = None, on_info=None) -> int:
    """``on_info``: called with the first-line JSON instead of printing it (``--print-env``)."""
    args = parser().parse_args(argv)
    try:
        server = create_server(host=args.host, port=args.port, import_csv=args.import_csv, generate=args.generate,
                               time_scale=args.time_scale, limits=not args.no_limits, timezone=args.timezone,
                               today=args.today, seed=args.seed, rate_limit=args.rate_limit,
                               block_after=args.block_after, subdomain=args.subdomain, verbose=args.verbose,
                               accounts=args.accounts)
    except Exception as exc:  # bad CSV folder, bad time zone, port in use...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if on_info is not None:
        on_info(server.info)
    else:
        print(json.dumps(server.info, ensure_ascii=False), flush=True)
    for note in getattr(server, "notes", [])[:50]:
        print(f"skipped CSV row: {note}", file=sys.stderr)

    def stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0

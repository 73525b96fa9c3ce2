"""``lifecycle sandbox bitrix24`` / ``python -m sandbox.bitrix24``: serve one emulated portal on loopback.

The first line on stdout is one JSON object (see README.md in this folder) with the webhook URL, OAuth app
credentials and tokens, the token endpoint, ``application_token`` and, with ``--tls``, ``ca_file`` and
``https_proxy``. With ``--portals N`` (N > 1) it is ``{"base_url", "control_url", "oauth_token_url", "tls",
"portals": [<one such object per portal, plus "index">]}``: portal i lives under ``/p/{i}`` with its own
credentials and data (``--generate`` seeds portal i with ``--seed`` + i). Then the process serves until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from datetime import date
from pathlib import Path

from .portal import Portal
from .server import RunningServer


def create_server(*, host: str = "127.0.0.1", port: int = 0, import_csv: str | Path | None = None,
                  generate: tuple[int, int] | None = None, time_scale: float = 1.0, limits: bool = True,
                  tls: bool = False, timezone: str = "Europe/Moscow", today: date | None = None, seed: int = 7,
                  cert_dir: str | Path | None = None, operating_limit: float | None = None,
                  bucket_size: int | None = None, drain_rate: float | None = None, frozen_clock: bool = False,
                  verbose: bool = False, portals: int | None = None) -> RunningServer:
    """Build, seed and bind a portal (not yet serving: call ``.start()`` or ``.serve_forever()``).

    ``portals=N`` (N > 1) builds N independent portals served by the one server under ``/p/0`` ..
    ``/p/{N-1}``; portal i is generated with ``seed + i`` (``import_csv`` loads the same folder into each).
    """
    from . import seed as seeding

    if import_csv and generate:
        raise ValueError("use either --import-csv or --generate, not both")
    if portals is not None and portals < 1:
        raise ValueError("--portals must be at least 1")
    multi = portals is not None and portals > 1
    built: list[Portal] = []
    notes: list[str] = []
    for index in range(portals if multi else 1):
        portal = Portal(timezone_name=timezone, time_scale=time_scale, limits=limits, seed=seed + index,
                        operating_limit=operating_limit, bucket_size=bucket_size, drain_rate=drain_rate,
                        frozen_clock=frozen_clock)
        if import_csv:
            _, problems = seeding.import_csv(portal, Path(import_csv))
            if index == 0:
                notes += problems
        elif generate:
            seeding.generate(portal, generate[0], generate[1], today=today, seed=seed + index)
        built.append(portal)
    ssl_context = None
    ca_file = None
    temp_dir = None
    if tls:
        from .tlsutil import make_certificates, server_context

        if cert_dir is None:
            temp_dir = tempfile.mkdtemp(prefix="b24-sandbox-tls-")
            cert_dir = temp_dir
        ca, cert, key = make_certificates(Path(cert_dir))
        ssl_context = server_context(cert, key)
        ca_file = str(ca)
    server = RunningServer(None if multi else built[0], host=host, port=port, ssl_context=ssl_context, ca_file=ca_file,
                           verbose=verbose, portals=built if multi else None)
    server.notes = notes  # type: ignore[attr-defined]
    server.temp_dir = temp_dir  # type: ignore[attr-defined]
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
    p = argparse.ArgumentParser(prog="lifecycle sandbox bitrix24",
                                description="Serve an emulated Bitrix24 portal (REST API) on loopback.")
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port; see the first output line)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--import-csv", metavar="DIR", help="load contacts.csv, deals.csv [, companies.csv, deal_products.csv], keeping ids")
    source.add_argument("--generate", metavar="CONTACTS:DEALS", type=_pair, help="generate a synthetic customer base")
    p.add_argument("--time-scale", type=_positive, default=1.0, help="run limits and token lifetimes X times faster")
    p.add_argument("--no-limits", action="store_true", help="switch off the 503 rate limit and the 429 operating limit")
    p.add_argument("--tls", action="store_true", help="serve HTTPS with a generated CA (ca_file in the first line)")
    p.add_argument("--cert-dir", help="where to write the TLS files (default: a temporary folder)")
    p.add_argument("--timezone", default="Europe/Moscow", help="portal time zone (default Europe/Moscow)")
    p.add_argument("--today", type=date.fromisoformat, help="'today' for --generate (YYYY-MM-DD)")
    p.add_argument("--seed", type=int, default=7, help="random seed for --generate and probabilistic faults")
    p.add_argument("--portals", type=_count, default=1,
                   help="serve N independent portals from this one process, portal i under /p/i (default 1)")
    p.add_argument("--operating-limit", type=_positive, help="operating-time limit in portal seconds (default 480)")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    return p


def main(argv: list[str] | None = None, on_info=None) -> int:
    """``on_info``: called with the first-line JSON instead of printing it (``--print-env``)."""
    args = parser().parse_args(argv)
    try:
        server = create_server(host=args.host, port=args.port, import_csv=args.import_csv, generate=args.generate,
                               time_scale=args.time_scale, limits=not args.no_limits, tls=args.tls,
                               timezone=args.timezone, today=args.today, seed=args.seed, cert_dir=args.cert_dir,
                               operating_limit=args.operating_limit, verbose=args.verbose,
                               portals=args.portals)
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
        if getattr(server, "temp_dir", None):
            shutil.rmtree(server.temp_dir, ignore_errors=True)
    return 0

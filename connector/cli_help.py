"""Descriptions, examples and the global options of every ``lifecycle`` subcommand.

:func:`finish_parser` runs once over the built parser: every subcommand (and ``model fit``/``backtest``)
gets a description and an example in its ``--help``, and the global ``-v``/``-q``/``--log-format`` are
also accepted after the subcommand (``lifecycle sync -q``), except for ``sandbox``, whose options are
the emulator's own.
"""

from __future__ import annotations

import argparse

HELP: dict[str, tuple[str, str]] = {
    "demo": ("Run a whole cycle on a generated sample base in a throw-away sandbox and print the result.",
             "lifecycle demo --customers 2000 --keep ./demo"),
    "sandbox": ("Serve an emulator of Bitrix24, amoCRM or the ad cabinets on loopback, for trials without a live "
                "system. --print-env prints `export LIFECYCLE_...=` lines for its credentials instead of the JSON line.",
                "lifecycle sandbox bitrix24 --print-env --generate 200:600"),
    "sync": ("Pull the CRM into the mirror, compute today's segments, store who entered and left, write tags, "
             "create the campaigns' tasks and deals and update the ad audiences.",
             "lifecycle sync --config lifecycle.toml"),
    "run": ("Run as a daemon: sync on the schedule and on the CRM's webhooks; serve health and metrics. With "
            "--state-url (PostgreSQL, no --config): the web side of a many-portal deployment (/status, every "
            "portal's webhooks; the syncs run in `lifecycle worker`).",
            "lifecycle run --config lifecycle.toml --port 8080"),
    "plan": ("Show the campaign actions the next sync would take and skip, from the mirror; writes nothing.",
             "lifecycle plan --format json"),
    "report": ("Segment sizes, the 9-cell lifecycle matrix and the KPI, computed from the mirror.",
               "lifecycle report --as-of 2026-01-31 --format csv"),
    "init": ("Write a commented starter config for a CRM (asks for what is missing on a terminal). A webhook URL "
             "or token you give goes into the file, readable by you only, and is never printed.",
             "lifecycle init --kind amocrm --url https://example.amocrm.ru"),
    "check": ("Check everything a sync needs without writing anything to the CRM: the config, the state store, "
              "CRM connectivity and scopes, the campaigns' pipelines, stages and users, the ad cabinets' "
              "credentials. Lists every problem; exit 1 if any.",
              "lifecycle check --config lifecycle.toml"),
    "config": ("Show the effective settings and where each came from (file, environment or default); "
               "secrets are masked.", "lifecycle config show --format json"),
    "config show": ("The effective settings, one per line, with where each came from: the file, an environment "
                    "variable (named) or the default. Secret values are masked.", "lifecycle config show"),
    "runs": ("The history of runs (newest first) with their counts and errors, and the per-record errors "
             "of campaign actions.", "lifecycle runs --failed --limit 5"),
    "members": ("The members of one segment as stored by the last sync: name, phone, e-mail, responsible "
                "(user id) and key features. Personal data: mind where you send it.",
                "lifecycle members lifecycle.regular_active --format csv > regular.csv"),
    "users": ("Dashboard accounts: add, list and remove; a viewer sees only the portals granted to them.",
              "lifecycle users add owner@example.com --role admin"),
    "users add": ("Create an account or update its role, portals and password (asked, or read from stdin with "
                  "--password-stdin); passwords are stored as argon2 hashes.",
                  "lifecycle users add rep@example.com --role viewer --portal default"),
    "users list": ("The dashboard accounts with their roles and portals (never their passwords).", "lifecycle users list"),
    "users remove": ("Delete a dashboard account.", "lifecycle users remove rep@example.com"),
    "worker": ("Many-portal mode: run the registry portals' syncs as procrastinate jobs on the store's PostgreSQL; "
               "start as many as you like, on any machines. SIGTERM lets running syncs reach a safe point.",
               "lifecycle worker --state-url postgresql+psycopg://lifecycle@db/lifecycle --concurrency 4"),
    "campaigns": ("Campaign approval: a new campaign's first batch (and a new portal's) waits until approved.",
                  "lifecycle campaigns approve winback"),
    "campaigns approve": ("Release a campaign's waiting actions (the next sync sends them); its later batches are "
                          "sent without asking.", "lifecycle campaigns approve winback --config lifecycle.toml"),
    "amocrm": ("amoCRM integration tools.", "lifecycle amocrm widget --out widget.zip --public-url https://lifecycle.example.com"),
    "amocrm widget": ("Build the amoCRM widget archive: a Lifecycle tab in the contact card that shows the customer page "
                      "from this connector. Upload it in amoMarket > your integration.",
                      "lifecycle amocrm widget --out widget.zip --public-url https://lifecycle.example.com"),
    "model": ("Fit or backtest the prediction model (P(alive), expected purchases).", "lifecycle model fit"),
    "model fit": ("Fit the prediction model on the portal's mirror (or a summary file) and print its parameters.",
                  "lifecycle model fit --format json"),
    "model backtest": ("Fit on the mirror as of a date and compare with the purchases that followed.",
                       "lifecycle model backtest --as-of 2026-01-01"),
}


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """-v, -q and --log-format; ``suppress``: on a subcommand, so it does not reset the top-level value."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("-v", "--verbose", "--debug", dest="debug", action="store_true",
                        help="debug logging; on an error also print its (redacted) traceback", **default)
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only; no progress", **default)
    parser.add_argument("--log-format", choices=("text", "json"),
                        help="log lines as text or JSON (default: text on a terminal, JSON otherwise)",
                        **({"default": argparse.SUPPRESS} if suppress else {"default": None}))


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def finish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for name, sub in _subparsers(parser).items():
        _describe(name, sub)
        if name != "sandbox":
            add_global_options(sub, suppress=True)
        for inner, nested in _subparsers(sub).items():
            _describe(f"{name} {inner}", nested)
            add_global_options(nested, suppress=True)
    return parser


def _describe(name: str, sub: argparse.ArgumentParser) -> None:
    description, example = HELP.get(name, (None, None))
    if description and not sub.description:
        sub.description = description
    if example and not sub.epilog:
        sub.epilog = f"example: {example}"

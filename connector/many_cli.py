"""``lifecycle worker`` and ``lifecycle run --state-url URL``: the many-portal commands, which start either the
workers (connector/worker.py) or the web service (connector/portals_web.py); kept apart from both so neither
imports the other's command."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("lifecycle.worker")


def many_portal_command(args: Any) -> int:
    """``lifecycle worker`` and ``lifecycle run --state-url URL [--portals-dir DIR]``."""
    from connector.config import ConfigError
    from connector.portals_cli import state_url
    from connector.worker import WorkerSettings, Workers, conninfo

    if getattr(args, "config", None):
        raise ConfigError("--state-url serves every portal of the registry; drop --config (one portal: "
                          "lifecycle run --config F)")
    url = state_url(args)  # --state-url, else LIFECYCLE_STATE_URL[_FILE]; its password becomes a secret
    conninfo(url)  # PostgreSQL only: a clear error before anything starts
    if args.command == "worker":
        if args.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        settings = WorkerSettings.from_env(tick=args.tick, stalled_after=args.stalled_after)
        return Workers(url, settings, pool_size=args.concurrency + 3).run(args.concurrency, name=args.name)
    from connector.portals_web import PortalService

    service = PortalService(url, port=8080 if args.port is None else args.port)
    if getattr(args, "portals_dir", None):
        from pathlib import Path

        from rich.console import Console

        from connector.portals_cli import sync_dir

        if sync_dir(service.workers.registry(), Path(args.portals_dir), Console(stderr=True)):
            log.error("some portal files in %s have errors (above); the others are served", args.portals_dir)
    return service.run()

"""Adapters for outside systems: one kit per CRM (adapters/base.py is the contract), and ad cabinets.

``KITS`` names the module holding each CRM's ``KIT``; :func:`kit` imports it on first use, so a command
that talks to no CRM never loads the HTTP clients. Adding a CRM is one new package and one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from adapters.base import CrmKit

KITS: dict[str, str] = {
    "bitrix24": "adapters.bitrix24",
    "amocrm": "adapters.amocrm",
    "csv": "adapters.csv_files",
}


def kit(name: str) -> CrmKit[Any]:
    """The :class:`adapters.base.CrmKit` of the CRM called ``name`` (a key of KITS)."""
    if name not in KITS:
        raise KeyError(f"no adapter for CRM kind {name!r}; known: {', '.join(KITS)}")
    return importlib.import_module(KITS[name]).KIT

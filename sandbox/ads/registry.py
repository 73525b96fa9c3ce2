"""The cabinets the server serves (each module adds itself here when it exists)."""

from __future__ import annotations

import importlib

from sandbox.ads.base import Cabinet

CABINETS: dict[str, type[Cabinet]] = {}
for _name in ("yandex", "vk", "google", "meta"):
    try:
        _module = importlib.import_module(f"sandbox.ads.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"sandbox.ads.{_name}":
            raise
        continue
    CABINETS[_name] = _module.CABINET

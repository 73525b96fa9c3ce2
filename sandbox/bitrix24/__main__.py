"""``python -m sandbox.bitrix24 --port P ...`` (same as ``lifecycle sandbox bitrix24``)."""

from .cli import main

raise SystemExit(main())

"""``python -m sandbox.amocrm --port P ...`` (same as ``lifecycle sandbox amocrm``)."""

from .cli import main

raise SystemExit(main())

"""A local, faithful emulator of one Bitrix24 portal's REST API (see README.md in this folder).

Entry points: :func:`cli.main` (``lifecycle sandbox bitrix24`` / ``python -m sandbox.bitrix24``) and
:func:`testing.running_portal` for in-process use in tests and benchmarks.
"""

from .cli import create_server, main
from .portal import Portal
from .testing import PortalHandle, PortalsHandle, portal_fixture, running_portal, running_portals

__all__ = ["Portal", "PortalHandle", "PortalsHandle", "create_server", "main", "portal_fixture", "running_portal",
           "running_portals"]

"""A local, faithful emulator of one amoCRM account's API v4 (see README.md in this folder).

Entry points: :func:`cli.main` (``lifecycle sandbox amocrm`` / ``python -m sandbox.amocrm``) and
:func:`testing.running_account` for in-process use in tests and benchmarks.
"""

from .account import Account
from .cli import create_server, main
from .testing import AccountHandle, AccountsHandle, account_fixture, running_account, running_accounts

__all__ = ["Account", "AccountHandle", "AccountsHandle", "account_fixture", "create_server", "main", "running_account",
           "running_accounts"]

"""Fixtures the portal-registry tests share (test_registry, test_portal_secrets, test_portal_import,
test_portals_cli): each imports them, so each test starts with no process key and runs on both databases."""

from __future__ import annotations

import pytest

from connector import crypto


@pytest.fixture(autouse=True)
def _no_process_key(monkeypatch):
    """Each test starts with no secret key configured for the process."""
    monkeypatch.delenv(crypto.KEY_VAR, raising=False)
    crypto.configure(None)
    yield
    crypto.configure(None)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_url")

"""Logs: JSON lines with bound context; secrets redacted from messages and tracebacks."""

from __future__ import annotations

import json
import logging

from connector import logs


def test_json_lines_carry_context_and_never_a_secret(capsys):
    logs.setup(json_lines=True)
    logs.register_secrets(["supersecretvalue42"])
    log = logging.getLogger("lifecycle.test")
    with logs.bind(run_id=7, portal="acme", stage="pull"):
        log.info("calling https://acme.bitrix24.ru/rest/1/abcdef123456/crm.deal.list with supersecretvalue42")
        try:
            raise RuntimeError("refresh failed: access_token=tok-987654&client_secret=cs-111 Authorization: Bearer xyz.abc")
        except RuntimeError:
            log.exception("failed")
    log.info("outside postgresql+psycopg://user:pgpass@db:5432/lifecycle")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    first, second, third = lines
    assert first["run_id"] == 7 and first["portal"] == "acme" and first["stage"] == "pull" and first["level"] == "info"
    text = json.dumps(lines)
    for secret in ("abcdef123456", "supersecretvalue42", "tok-987654", "cs-111", "xyz.abc", "pgpass"):
        assert secret not in text, secret
    assert "RuntimeError" in second["exc"] and "/rest/1/***" in first["msg"]
    assert "run_id" not in third  # the context ended with the block


def test_text_lines_on_a_terminal(capsys):
    logs.setup(json_lines=False)
    logging.getLogger("lifecycle.test").warning("token=abc123456 expired")
    err = capsys.readouterr().err
    assert "WARNING" in err and "abc123456" not in err and "token=***" in err

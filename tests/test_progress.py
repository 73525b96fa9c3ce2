"""Progress of a sync: rich bars on a terminal, a log line every ~10 s ("N of M, ETA") otherwise.

The log renderer takes an injectable clock, so no test waits; the CLI tests drive ``lifecycle sync`` in
process against the Bitrix24 sandbox over HTTP."""

from __future__ import annotations

import json
import logging
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from connector.cli import main
from connector.progress import LogProgress, RichProgress, for_output
from sandbox.bitrix24 import running_portal
from tests.conftest import ROOT


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_come_once_per_interval_with_count_total_and_eta(caplog):
    clock = FakeClock()
    progress = LogProgress(interval=10, clock=clock)
    caplog.set_level(logging.INFO, logger="lifecycle.progress")
    stage = progress.stage("pull contacts", 1000)
    for _ in range(5):  # 100 records, 1 s apart: no line before 10 s have passed
        clock.now += 1
        stage.advance(20)
    assert [r.getMessage() for r in caplog.records] == []
    for _ in range(5):  # reaching 10 s: one line, 200 of 1000 after 10 s -> 40 s to go
        clock.now += 1
        stage.advance(20)
    assert [r.getMessage() for r in caplog.records] == ["pull contacts: 200 of 1000, ETA 40s"]
    clock.now += 5
    stage.advance(100)  # only 5 s since the last line: nothing
    assert len(caplog.records) == 1
    clock.now += 5
    stage.advance(100)
    assert caplog.records[-1].getMessage() == "pull contacts: 400 of 1000, ETA 30s"
    stage.done()
    assert caplog.records[-1].getMessage() == "pull contacts: done, 400 of 1000 in 20s"


def test_a_stage_without_a_total_logs_counts_without_eta(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="lifecycle.progress")
    stage = LogProgress(interval=10, clock=clock).stage("pull deals")
    clock.now += 12
    stage.advance(2500)
    assert caplog.records[-1].getMessage() == "pull deals: 2500"


def test_rich_bars_on_a_forced_terminal_show_each_stage_with_counts():
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    with RichProgress(Console(file=buf, force_terminal=True, width=120)) as progress:
        stage = progress.stage("write-back", 40)
        stage.advance(30)
        stage.advance(10)
        stage.done()
    text = buf.getvalue()
    assert "write-back" in text and "40/40" in text
    assert for_output(Console(file=StringIO(), force_terminal=True)).__class__ is RichProgress
    assert for_output(Console(file=StringIO(), force_terminal=False)).__class__ is LogProgress


def _config(tmp_path, portal) -> str:
    path = tmp_path / "lifecycle.toml"
    path.write_text(f'[crm]\nkind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n'
                    '[state]\nurl = "sqlite:///state.db"\n[writeback]\ntag_segments = ["status.*"]\n', encoding="utf-8")
    return str(path)


def test_cli_sync_without_a_terminal_logs_progress_lines(tmp_path, capsys, monkeypatch):
    import connector.progress

    monkeypatch.setattr(connector.progress, "LOG_INTERVAL", 0)  # a line at every advance: no waiting
    with running_portal(generate=(120, 300), time_scale=50) as portal:
        assert main(["--log-format", "json", "sync", "--config", _config(tmp_path, portal)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    progress = [r["msg"] for r in lines if r["logger"] == "lifecycle.progress"]
    assert any(m.startswith("pull contacts: ") for m in progress), progress
    assert any(m.startswith("pull deals: done, 300") for m in progress), progress
    assert any(m.startswith("pull contacts: done, 120") for m in progress), progress
    assert any(m.startswith("write-back: ") and " of " in m for m in progress), progress


def test_cli_sync_quiet_shows_no_progress(tmp_path, capsys, monkeypatch):
    import connector.progress

    monkeypatch.setattr(connector.progress, "LOG_INTERVAL", 0)
    with running_portal(generate=(30, 60), time_scale=50) as portal:
        assert main(["sync", "-q", "--config", _config(tmp_path, portal)]) == 0
    assert "lifecycle.progress" not in capsys.readouterr().err


def test_cli_sync_on_a_forced_terminal_draws_progress_bars(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: treat stderr as a terminal
    with running_portal(generate=(60, 150), time_scale=50) as portal:
        assert main(["sync", "--config", _config(tmp_path, portal)]) == 0
    err = capsys.readouterr().err
    assert "pull contacts" in err and "pull deals" in err and "write-back" in err
    assert "150/150" in err and "60/60" in err  # the finished bars of the pull
    assert "━" in err  # a drawn bar


def test_cli_sync_in_a_pseudo_terminal_draws_progress_bars(tmp_path):
    with running_portal(generate=(40, 90), time_scale=50) as portal:
        config = _config(tmp_path, portal)
        master, slave = pty.openpty()
        env = {**os.environ, "COLUMNS": "120"}
        env.pop("TTY_COMPATIBLE", None)
        env.pop("FORCE_COLOR", None)
        proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "sync", "--config", config], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        chunks = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=60)
        os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, err[-2000:]
    assert "pull contacts" in err and "90/90" in err and "━" in err
    assert b"sync run" in out

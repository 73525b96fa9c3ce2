"""Two syncs of one portal at once (issue 11): two `lifecycle sync` processes started 0.2-1 s apart, or one
beside `lifecycle run`, on SQLite and on PostgreSQL, against the Bitrix24 and amoCRM sandboxes with call-task
and deal campaigns. Every trial must end with each planned action in the CRM exactly once (none twice, none
missing), no traceback anywhere, and a second process that either ran after the first (exit 0) or said
"another sync of portal X is running since ..." (exit 3). Processes started together on a new database
migrate it once, without a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from connector.config import load_config
from tests.test_campaigns_e2e import CAMPAIGNS, CRMS, expected
from tests.test_daemon import free_port, metric, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRIALS = int(os.environ.get("LIFECYCLE_CONCURRENT_TRIALS", "10"))  # the bar: 10 trials per case
GENERATE = (200, 600)  # contacts, deals: a few dozen call tasks and deals per trial
LOCKED = "another sync of portal"


def gap(trial: int) -> float:
    """0.2 .. 1.0 s between the two starts, spread over the trials."""
    return 0.2 + 0.8 * (trial % TRIALS) / max(TRIALS - 1, 1)


def write_config(folder: Path, crm, handle, state_url: str, portal: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lifecycle.toml"
    path.write_text(
        "[crm]\n" + crm.crm_section(handle) + f'name = "{portal}"\noverlap_minutes = 0\n'
        f"[state]\nurl = {json.dumps(state_url)}\n"
        + CAMPAIGNS.format(users=json.dumps(crm.users(handle)), pipeline=crm.pipeline, batch=3) + extra,
        encoding="utf-8",
    )
    return path


def start_sync(path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "connector.cli", "sync", "--config", str(path), "--format", "json",
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err


def tally(config, crm, handle) -> tuple[int, int, int, int]:
    """(objects expected, duplicated objects, missing objects, actions still pending) for one trial."""
    from connector.pipeline import open_store

    want = expected(config)
    have = crm.objects(handle)
    store = open_store(config)
    try:
        pending = len(store.ledger(["planned", "sending", "failed"]))
    finally:
        store.close()
    duplicated = sum(n - 1 for n in have.values() if n > 1) + sum(n for m, n in have.items() if m not in want)
    missing = sum(1 for m in want if m not in have)
    return sum(want.values()), duplicated, missing, pending


class Trials:
    """What every trial saw; asserted once at the end, so a failing run reports all its numbers."""

    def __init__(self, name: str):
        self.name = name
        self.rows: list[dict] = []

    def add(self, crm: str, codes: list[int], errs: list[str], counts: tuple[int, int, int, int]) -> None:
        self.rows.append({"crm": crm, "codes": codes, "tracebacks": sum("Traceback" in e for e in errs),
                          "bad_exit": sum(1 for c, e in zip(codes, errs) if c not in (0, 3) or (c == 3 and LOCKED not in e)),
                          "expected": counts[0], "duplicated": counts[1], "missing": counts[2], "pending": counts[3],
                          "errors": [e.strip().splitlines()[-1] for c, e in zip(codes, errs) if c != 0 and e.strip()]})

    def check(self, *, overlapping: bool = True) -> None:
        total = {k: sum(r[k] for r in self.rows) for k in ("duplicated", "missing", "pending", "tracebacks", "bad_exit")}
        waited = sum(1 for r in self.rows if 3 in r["codes"])
        print(f"{self.name}: {len(self.rows)} trials, {sum(r['expected'] for r in self.rows)} objects expected, "
              f"{total['duplicated']} duplicated in {sum(1 for r in self.rows if r['duplicated'])} trials, "
              f"{total['missing']} missing, {total['pending']} pending, {total['tracebacks']} tracebacks, "
              f"{total['bad_exit']} bad exits, {waited} trials where the second process found the lock held")
        for r in self.rows:
            print("  ", r)
        assert all(r["expected"] > 0 for r in self.rows)  # every trial had call tasks and deals to create
        assert total == {"duplicated": 0, "missing": 0, "pending": 0, "tracebacks": 0, "bad_exit": 0}, self.rows
        assert all(0 in r["codes"] for r in self.rows)  # one of the two ran the sync
        if overlapping:  # the syncs really ran into each other (else this test would prove nothing)
            assert waited >= 1, self.rows


def two_cli_syncs(tmp_path: Path, state_url, name: str, *, gaps=gap) -> Trials:
    trials = Trials(name)
    for trial in range(TRIALS):
        crm = CRMS[trial % 2]
        with crm.start(generate=GENERATE, seed=20 + trial) as handle:
            path = write_config(tmp_path / f"t{trial}", crm, handle, state_url(trial), f"p{trial}")
            crm.slow_writes(handle, delay=0.1)  # each write answer held: the first sync lasts seconds
            first = start_sync(path)
            time.sleep(gaps(trial))
            second = start_sync(path)
            results = [finish(first), finish(second)]
            crm.clear(handle)
            trials.add(crm.name, [r[0] for r in results], [r[2] for r in results], tally(load_config(path), crm, handle))
    return trials


def test_two_cli_syncs_on_sqlite_create_each_object_once(tmp_path):
    two_cli_syncs(tmp_path, lambda t: f"sqlite:///{tmp_path / f't{t}' / 'state.db'}", "sqlite").check()


def test_two_cli_syncs_on_postgresql_create_each_object_once(tmp_path, postgres_url):
    # one fresh database, a portal per trial: the first trial also migrates the new database from two processes
    two_cli_syncs(tmp_path, lambda t: postgres_url, "postgresql").check()


def test_a_cli_sync_beside_the_daemon_creates_each_object_once(tmp_path):
    trials = Trials("cli beside daemon")
    for trial in range(TRIALS):
        crm = CRMS[trial % 2]
        with crm.start(generate=GENERATE, seed=40 + trial) as handle:
            folder = tmp_path / f"t{trial}"
            path = write_config(folder, crm, handle, f"sqlite:///{folder / 'state.db'}", f"p{trial}",
                                extra='[schedule]\nevery = "1h"\n[daemon]\nhost = "127.0.0.1"\nlock_seconds = 2\n')
            crm.slow_writes(handle, delay=0.1)
            port = free_port()
            log = folder / "daemon.log"
            with log.open("w", encoding="utf-8") as handle_log:
                daemon = subprocess.Popen([sys.executable, "-m", "connector.cli", "run", "--config", str(path), "--port",
                                           str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=handle_log)
                try:
                    time.sleep(gap(trial))
                    cli = finish(start_sync(path))
                    # the daemon's first sync (at start) has run or was skipped for the CLI's lock
                    wait_for(lambda: metric(port, "lifecycle_syncs_total") + metric(port, "lifecycle_syncs_skipped_locked_total") >= 1,
                             180, "the daemon's first sync never ended")
                    skipped = metric(port, "lifecycle_syncs_skipped_locked_total") >= 1
                finally:
                    daemon.send_signal(signal.SIGTERM)
                    code = daemon.wait(timeout=60)
            crm.clear(handle)
            text = log.read_text(encoding="utf-8")
            if '"level": "error"' in text:  # a failed sync: the daemon logs it and goes on, so make it count
                code = 1
            # the daemon counts as the process that found the lock held (3) when it skipped its sync
            trials.add(crm.name, [3 if skipped else code, cli[0]], [LOCKED + text if skipped else text, cli[2]],
                       tally(load_config(path), crm, handle))
    trials.check()


def test_a_second_sync_told_to_wait_runs_after_the_first_and_adds_nothing(tmp_path):
    crm = CRMS[0]
    with crm.start(generate=GENERATE, seed=60) as handle:
        path = write_config(tmp_path / "w", crm, handle, f"sqlite:///{tmp_path / 'w' / 'state.db'}", "w")
        crm.slow_writes(handle, delay=0.1)
        first = start_sync(path)
        wait_for(lambda: (tmp_path / "w" / "state.db").exists(), 60, "the first sync never opened its store")
        time.sleep(0.5)
        second = start_sync(path, "--wait", "300")
        (c1, out1, err1), (c2, out2, err2) = finish(first), finish(second)
        crm.clear(handle)
        assert (c1, c2) == (0, 0), (err1[-2000:], err2[-2000:])
        assert "Traceback" not in err1 + err2
        one, two = json.loads(out1), json.loads(out2)
        assert one["actions_created"] > 0 and two["actions_planned"] == 0 and two["actions_created"] == 0
        _, duplicated, missing, pending = tally(load_config(path), crm, handle)
        assert (duplicated, missing, pending) == (0, 0, 0)


def test_processes_starting_together_on_a_new_sqlite_file_migrate_it_once(tmp_path):
    # Each process imports, then waits for the same go file, so they open the new store within milliseconds.
    script = (
        "import sys, time, pathlib\n"
        "from connector.store import StateStore, SCHEMA_VERSION\n"
        "go = pathlib.Path(sys.argv[2])\n"
        "while not go.exists(): time.sleep(0.001)\n"
        "store = StateStore.open(sys.argv[1], 'p')\n"
        "print(store.try_lock(sys.argv[3], 60))\n"
        "store.close()\n"
    )
    tracebacks, winners = 0, []
    for trial in range(5):
        db, go = tmp_path / f"new{trial}.db", tmp_path / f"go{trial}"
        procs = [subprocess.Popen([sys.executable, "-c", script, f"sqlite:///{db}", str(go), f"h:{n}:x"], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(4)]
        time.sleep(1.5)  # the imports
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
        tracebacks += sum("Traceback" in err for _, err in outs)
        winners.append(sum(out.strip() == "True" for out, _ in outs))
    assert tracebacks == 0
    assert winners == [1] * 5  # exactly one process got the lock each time
    # and the same through the CLI: two syncs started at the same instant on a new file
    crm = CRMS[0]
    with crm.start(generate=(60, 180), seed=80) as handle:
        codes = Counter()
        for trial in range(3):
            folder = tmp_path / f"cli{trial}"
            path = write_config(folder, crm, handle, f"sqlite:///{folder / 'state.db'}", "same")
            procs = [start_sync(path), start_sync(path)]
            for code, _, err in (finish(p) for p in procs):
                assert "Traceback" not in err and (code == 0 or (code == 3 and LOCKED in err)), err[-2000:]
                codes[code] += 1
        assert codes[0] >= 3


def test_a_second_daemon_with_a_short_lock_skips_while_the_first_one_syncs(tmp_path):
    # lock_seconds = 2 and a sync of many seconds: only the renewals keep the second daemon out.
    import sqlite3

    crm = CRMS[0]
    with crm.start(generate=GENERATE, seed=90) as handle:
        folder = tmp_path / "d"
        db = folder / "state.db"
        path = write_config(folder, crm, handle, f"sqlite:///{db}", "d",
                            extra='[schedule]\nevery = "1h"\n[daemon]\nhost = "127.0.0.1"\nlock_seconds = 2\n')
        handle.faults(kind="slow_after", method="batch", probability=1.0, delay=0.3)

        def ledger(sql: str) -> tuple:
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as conn:
                    return conn.execute(sql).fetchone() or ()
            except sqlite3.Error:
                return ()

        ports = [free_port(), free_port()]
        logs = [(folder / f"daemon{n}.log").open("w", encoding="utf-8") for n in range(2)]
        procs: list[subprocess.Popen] = []
        try:
            procs.append(subprocess.Popen([sys.executable, "-m", "connector.cli", "run", "--config", str(path), "--port",
                                           str(ports[0])], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logs[0]))
            wait_for(lambda: (ledger("SELECT COUNT(*) FROM actions WHERE status = 'done'") or (0,))[0] > 0, 120,
                     "the first daemon never started its campaign actions")
            time.sleep(2.5)  # the first lock's 2 s are over: only renewals can keep it
            procs.append(subprocess.Popen([sys.executable, "-m", "connector.cli", "run", "--config", str(path), "--port",
                                           str(ports[1])], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logs[1]))
            wait_for(lambda: metric(ports[1], "lifecycle_syncs_skipped_locked_total") + metric(ports[1], "lifecycle_syncs_total") >= 1,
                     120, "the second daemon's first sync never ended")
            # ~40 batches held 0.3 s each: the first sync still runs, many seconds after it took the lock
            assert metric(ports[1], "lifecycle_syncs_skipped_locked_total") == 1
            wait_for(lambda: metric(ports[0], "lifecycle_syncs_total", status="ok") >= 1, 180, "the first sync never ended")
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(timeout=60) for proc in procs]
            for log in logs:
                log.close()
        handle.clear_faults()
        assert codes == [0, 0]
        assert ledger("SELECT COUNT(*) FROM runs") == (1,)  # the second daemon never started a run
        texts = [(folder / f"daemon{n}.log").read_text(encoding="utf-8") for n in range(2)]
        assert not [t for t in texts if "Traceback" in t or '"level": "error"' in t], texts
        _, duplicated, missing, pending = tally(load_config(path), crm, handle)
        assert (duplicated, missing, pending) == (0, 0, 0)

"""Write tests/data/legacy_v5.sqlite (+ legacy_v5.json): a state store made by the main before Alembic.

The previous main (commit 8576097, store schema version 5) is checked out into a temporary git worktree
and run with its own code: one ``sync`` against the amoCRM sandbox in OAuth mode with a call-task campaign
and a sales-generator deal campaign, an audience in the Yandex Audience sandbox, small seeded data. The
JSON beside the database keeps what a test needs to serve the same sandboxes again: the amoCRM app's
credentials and Yandex's token and segments (the CRM data itself is regenerated from the seed).

    python scripts/make_legacy_store.py [--commit 8576097] [--out tests/data]

tests/test_store_upgrade.py opens a copy with today's code (an Alembic upgrade) and syncs on.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2026-11-20"
SEED, GENERATE = 21, (300, 900)

# Runs inside the old checkout (its code on PYTHONPATH), in a scratch folder.
CHILD = r'''
import json, sys
from datetime import date
from pathlib import Path

from connector.config import load_config
from connector.pipeline import sync
from sandbox.ads import running_ads
from sandbox.amocrm import running_account

AS_OF = date.fromisoformat(sys.argv[1])
SEED, GENERATE = int(sys.argv[2]), (int(sys.argv[3]), int(sys.argv[4]))
CONFIG = sys.argv[5]
with running_account(generate=GENERATE, seed=SEED, today=AS_OF) as acct, running_ads(cabinets=["yandex"]) as ads:
    info, yandex = acct.info, ads.info["yandex"]
    users = sorted(int(u["id"]) for u in acct.state()["users"])[:2]
    Path("lifecycle.toml").write_text(CONFIG.format(
        base_url=info["base_url"], client_id=info["client_id"], client_secret=info["client_secret"],
        redirect_uri=info["redirect_uri"], code=info["authorization_code"], users=json.dumps(users),
        yandex_url=yandex["base_url"], yandex_token=yandex["token"]), encoding="utf-8")
    result = sync(load_config(Path("lifecycle.toml")), as_of=AS_OF)
    cabinet = ads.server.cabinets["/yandex"]
    summary = result.summary()
    print(json.dumps(summary, default=str))
    plain = lambda v: sorted(v) if isinstance(v, set) else v  # noqa: E731
    segments = [{**s, "members": {col: plain(vals) for col, vals in s["members"].items()}}
                for s in cabinet.segments.values()]
    Path("sandbox.json").write_text(json.dumps({
        "as_of": AS_OF.isoformat(), "seed": SEED, "generate": list(GENERATE),
        "amocrm": {k: info[k] for k in ("client_id", "client_secret", "redirect_uri")},
        "yandex": {"token": yandex["token"], "next_id": cabinet.next_id, "segments": segments},
        "summary": summary,
    }, indent=1, default=str), encoding="utf-8")
'''

CONFIG = """[crm]
kind = "amocrm"
base_url = "{base_url}"
client_id = "{client_id}"
client_secret = "{client_secret}"
redirect_uri = "{redirect_uri}"
authorization_code = "{code}"
overlap_minutes = 0

[state]
url = "sqlite:///state.db"

[writeback]
tag_segments = ["status.*"]

[[campaign]]
name = "winback"
segment = "status.former"
cooldown_days = 30
on_enter = [{{ action = "call_task", title = "Call {{{{name}}}}: win back", description = "Offer 10%", due_in_days = 2 }}]

[[campaign]]
name = "repeat"
segment = "lifecycle.promising_asleep"
responsible = {users}
on_enter = [{{ action = "deal", title = "Repeat sale: {{{{name}}}}", pipeline = "7000002", script = "Ask about order {{{{purchases}}}}", due_in_days = 3 }}]

[audiences]
default_region = "RU"
yandex_url = "{yandex_url}"
yandex_token = "{yandex_token}"

[[audience]]
segment = "status.prospect"
cabinet = "yandex"
name = "Prospects"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="8576097")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="legacy-store-"))
    checkout = scratch / "checkout"
    work = scratch / "run"
    work.mkdir()
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(checkout), args.commit], check=True)
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, AS_OF, str(SEED), *map(str, GENERATE), CONFIG], cwd=work,
                              env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode:
            sys.exit(f"the old sync failed:\n{proc.stdout}\n{proc.stderr}")
        print(proc.stdout.strip().splitlines()[-1])
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "state.db", args.out / "legacy_v5.sqlite")
        shutil.copyfile(work / "sandbox.json", args.out / "legacy_v5.json")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

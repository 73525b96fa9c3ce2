"""Campaign executor benchmark: a first sync with two campaigns (a call task for every former customer,
a sales-generator deal plus its call task for every promising-asleep one) against each sandbox with its
limits on. Prints actions created, the requests they took (lower bound: ceil(actions / 50) plus the
start-up checks) and wall seconds of the whole sync.

    python bench/campaigns.py --contacts 3000 --deals 9000 [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from connector.config import load_config  # noqa: E402
from connector.pipeline import sync  # noqa: E402
from sandbox.amocrm import running_account  # noqa: E402
from sandbox.bitrix24 import running_portal  # noqa: E402

CAMPAIGNS = """
[[campaign]]
name = "winback"
segment = "status.former"
auto_approve = true
on_enter = [{{ action = "call_task", title = "Call {{name}}: win back", description = "Script", due_in_days = 2 }}]
[[campaign]]
name = "repeat"
segment = "lifecycle.promising_asleep"
auto_approve = true
responsible = [1]
on_enter = [{{ action = "deal", title = "Repeat sale: {{name}}", pipeline = "{pipeline}", script = "Ask", due_in_days = 3 }}]
"""


def run(kind: str, contacts: int, deals: int) -> dict:
    ctx = (running_portal(generate=(contacts, deals), time_scale=20) if kind == "bitrix24"
           else running_account(generate=(contacts, deals), time_scale=10))
    with ctx as handle, tempfile.TemporaryDirectory() as tmp:
        if kind == "bitrix24":
            crm = f'kind = "bitrix24"\nwebhook_url = "{handle.webhook_url}"\nrequests_per_second = 40\n'
            pipeline = "1"
        else:
            crm = (f'kind = "amocrm"\nbase_url = "{handle.info["base_url"]}"\n'
                   f'access_token = "{handle.info["access_token"]}"\nrequests_per_second = 70\n')
            pipeline = "7000002"
        path = Path(tmp) / "bench.toml"
        path.write_text("[crm]\n" + crm + '[state]\nurl = "sqlite:///bench.db"\n' + CAMPAIGNS.format(pipeline=pipeline),
                        encoding="utf-8")
        config = load_config(path)
        started = time.perf_counter()
        summary = sync(config).summary()
        wall = time.perf_counter() - started
    created = int(summary["actions_created"])
    return {"crm": kind, "actions": created, "requests": summary["action_requests"],
            "lower_bound": math.ceil(created / 50), "failed": summary["actions_failed"], "sync_seconds": round(wall, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=3000)
    parser.add_argument("--deals", type=int, default=9000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = [run(kind, args.contacts, args.deals) for kind in ("bitrix24", "amocrm")]
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        print(f"{r['crm']:9} {r['actions']:6} actions created in {r['requests']} requests "
              f"(lower bound {r['lower_bound']} + start-up checks), {r['failed']} failed; whole sync {r['sync_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``lifecycle sandbox ads --port P [--time-scale X] [--no-limits]``: first stdout line = one JSON object."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None, on_info=None) -> int:
    """``on_info``: called with the first-line JSON instead of printing it (``--print-env``)."""
    p = argparse.ArgumentParser(prog="lifecycle sandbox ads",
                                description="Serve emulated Yandex Audience, VK Ads, Google Data Manager and Meta APIs.")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--time-scale", type=float, default=1.0, help="asynchronous processing and quotas run X times faster")
    p.add_argument("--no-limits", action="store_true", help="switch off quotas and rate limits")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    from sandbox.ads.server import create_server

    try:
        server = create_server(port=args.port, host=args.host, time_scale=args.time_scale, limits=not args.no_limits,
                               seed=args.seed, verbose=args.verbose)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if on_info is not None:
        on_info(server.info())
    else:
        print(json.dumps(server.info(), ensure_ascii=False), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

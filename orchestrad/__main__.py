"""`orchestrad`: run the daemon in the foreground, or repair or verify its log."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestrad", description="The orchestra daemon (runs in the foreground).")
    parser.add_argument("--home", help="keep config, state and socket under this directory (default: $ORCHESTRA_HOME or the platform's places)")
    parser.add_argument("--repair", action="store_true", help="move a damaged part of the log aside, keep the good records before it, and exit")
    parser.add_argument("--verify", action="store_true", help="replay the whole log and compare it with the state from the snapshots, and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--segment-bytes", type=int, default=64 << 20, help=argparse.SUPPRESS)  # for tests
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from orchestra.shared.paths import resolve

    paths = resolve(args.home)
    if args.repair:
        return _repair(paths)
    if args.verify:
        return _verify(paths)
    from orchestrad.daemon import Daemon, run_loop

    daemon = Daemon(paths, segment_bytes=args.segment_bytes)
    return run_loop(daemon.main())


def _repair(paths) -> int:
    from orchestrad.log import UnsupportedLogFormat, repair

    try:
        for line in repair(paths.log_dir):
            print(line)
    except UnsupportedLogFormat as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


def _verify(paths) -> int:
    from orchestrad.log import LogCorrupt, UnsupportedLogFormat
    from orchestrad.store import Store, StoreError

    from orchestrad.log import verify as verify_log

    # Read-only throughout: a daemon may be using this home right now.
    try:
        report = verify_log(paths.log_dir, deep=True)
        store = Store.open(paths.log_dir, paths.snapshot_dir, readonly=True)
    except (LogCorrupt, UnsupportedLogFormat, StoreError) as exc:
        print(exc, file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"nothing to verify: {exc}")
        return 0
    for path, offset, size, why in report.truncated:
        print(f"a torn record at the end of {path} (offset {offset}, {size} bytes) will be cut at the next start: {why}")
    notes = store.verify()
    store.log.close()
    for line in store.notes + notes:
        print(line)
    return 1 if any(n.startswith("MISMATCH") for n in notes) else 0


if __name__ == "__main__":
    sys.exit(main())

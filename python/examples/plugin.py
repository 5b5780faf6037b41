#!/usr/bin/env python3
"""A pkgctx plugin in Python: applies a package's settings, then works until the daemon cancels
the context (an update, a reschedule, a remove), and starts over with the new settings. Exits
when the package is removed or deleted, or on Ctrl-C.

    python3 plugin.py [--segment pkgctx] PACKAGE
"""
import argparse
import sys

import pkgctx

FINAL = {pkgctx.Cause.REMOVED, pkgctx.Cause.DELETED}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segment", default="pkgctx", help="the daemon's segment (default pkgctx)")
    ap.add_argument("package")
    args = ap.parse_args()
    try:
        with pkgctx.attach(args.segment) as worker:
            while True:
                # Token first, then read: a change after the read cancels this token.
                with worker.token(args.package) as token:
                    pkg = worker.read(args.package)
                    print(f"applying {args.package} {pkg.version} {pkg.settings_json} (checksum {pkg.checksum_hex})", flush=True)
                    token.wait()  # the work; Ctrl-C interrupts
                    print(f"cancelled: {token.cause}", flush=True)
                    if token.cause in FINAL:
                        return 0
    except pkgctx.PkgctxError as e:
        print(f"plugin: {e.name}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())

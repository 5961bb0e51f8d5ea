"""Run a command with a private memcached and slapd for development (``make serve``).

    python -m repoze_who_memcached.devstack --var ./var -- paster serve development.ini

Both servers keep their state under ``--var`` (so a restart finds the same users), listen on
the fixed loopback ports development.ini expects, and are stopped, by their own pids, when
the command ends or on Ctrl-C. A random cache secret is created in ``var/secret`` on the first
run: development.ini reads it with ``secret_file``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .testing import MemcachedServer, SlapdServer

MEMCACHED_PORT = 22122
SLAPD_PORT = 3890
# PasteScript (``paster``) imports pkg_resources, which warns on every start; not ours to fix.
QUIET_PASTESCRIPT = "ignore:pkg_resources is deprecated as an API:UserWarning"


def child_environment() -> dict[str, str]:
    """This process's environment, with PasteScript's pkg_resources warning silenced."""
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"),
                                                   QUIET_PASTESCRIPT]))
    return env


def ensure_secret(path: Path) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m repoze_who_memcached.devstack",
        description="Start a private memcached and slapd, run COMMAND, stop them afterwards.",
    )
    parser.add_argument("--var", default="var", help="state folder (default: ./var)")
    parser.add_argument("--memcached-port", type=int, default=MEMCACHED_PORT)
    parser.add_argument("--slapd-port", type=int, default=SLAPD_PORT)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    var = Path(args.var).resolve()
    ensure_secret(var / "secret")
    memcached = MemcachedServer(port=args.memcached_port, workdir=var / "memcached")
    slapd = SlapdServer(port=args.slapd_port, workdir=var / "slapd")
    # Ctrl-C and SIGTERM set a flag instead of raising KeyboardInterrupt wherever the main
    # thread happens to be: an exception inside Popen could leave its child running, with
    # nobody left to stop it.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        try:
            memcached.prepare()
            memcached.start()
            slapd.prepare()
            slapd.start()
        except Exception as exc:
            print(f"devstack: {exc}", file=sys.stderr)
            return 1
        print(f"devstack: memcached on {memcached.url}, slapd on {slapd.url} (state in {var})",
              flush=True)
        if not command:
            stop.wait()
            return 0
        if stop.is_set():
            return 130
        child = subprocess.Popen(command, env=child_environment())
        while child.poll() is None:
            if stop.wait(0.2):
                # In a terminal the child got the same Ctrl-C; from `kill -INT` it did not:
                # pass it on if the child is still there after a second.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return child.wait(1)
                child.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return child.wait(10)
                child.terminate()
                return child.wait()
        return child.returncode
    finally:
        slapd.stop()
        memcached.stop()
        print("devstack: memcached and slapd stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())

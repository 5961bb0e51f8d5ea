"""Run a command with a private memcached and slapd for development (``make serve``).

    python -m repoze_who_memcached.devstack --var ./var --serve development.ini
    python -m repoze_who_memcached.devstack --var ./var -- COMMAND ...

Both servers keep their state under ``--var`` (so a restart finds the same users), listen on
loopback ports (``--memcached-port``, ``--slapd-port``; ``make serve MEMCACHED_PORT=...
SLAPD_PORT=... HTTP_PORT=...``) and are stopped, by their own pids, when the command ends or
on Ctrl-C. ``--serve INI`` runs ``paster serve INI --reload`` with ``ldap_url``,
``memcached_urls`` and ``http_port`` set to those ports, and ``secret_file`` to
``VAR/secret`` (development.ini reads them with ``get``). That random cache secret is
created on the first run.

A port another process listens on stops everything before anything starts, with a message
naming the port and the option that picks another: we never serve against a server that is
not ours.
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

from .testing import LOOPBACK, MemcachedServer, PortInUseError, SlapdServer, port_is_free

MEMCACHED_PORT = 22122
SLAPD_PORT = 3890
HTTP_PORT = 6543
# How a user of `make serve` (or of this module) picks another port, per server.
PORT_CHOICE = {
    "memcached": "make serve MEMCACHED_PORT=N (or --memcached-port N)",
    "slapd": "make serve SLAPD_PORT=N (or --slapd-port N)",
    "HTTP": "make serve HTTP_PORT=N (or --http-port N)",
}
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


def port_in_use(name: str, port: int) -> PortInUseError:
    """The error for a taken port, with this command's way of choosing another."""
    return PortInUseError(name, LOOPBACK, port,
                          f"Nothing is left running. Stop that process, or choose another port: "
                          f"{PORT_CHOICE[name]}.")


def serve_command(ini: str, memcached: MemcachedServer, slapd: SlapdServer,
                  http_port: int, secret_file: Path) -> list[str]:
    """``paster serve INI --reload`` with the servers' addresses as PasteDeploy variables."""
    paster = Path(sys.executable).with_name("paster")
    return [str(paster) if paster.exists() else "paster", "serve", ini, "--reload",
            f"ldap_url={slapd.url}", f"memcached_urls={memcached.url}", f"http_port={http_port}",
            f"secret_file={secret_file}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m repoze_who_memcached.devstack",
        description="Start a private memcached and slapd, run COMMAND, stop them afterwards.",
    )
    parser.add_argument("--var", default="var", help="state folder (default: ./var)")
    parser.add_argument("--memcached-port", type=int, default=MEMCACHED_PORT,
                        help=f"memcached's port (default: {MEMCACHED_PORT})")
    parser.add_argument("--slapd-port", type=int, default=SLAPD_PORT,
                        help=f"slapd's port (default: {SLAPD_PORT})")
    parser.add_argument("--http-port", type=int, default=HTTP_PORT,
                        help=f"the app's port, for --serve (default: {HTTP_PORT})")
    parser.add_argument("--serve", metavar="INI",
                        help="run paster serve INI --reload with these ports (instead of COMMAND)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.serve and command:
        parser.error("give --serve INI or a COMMAND, not both")
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
            # Every port first: a taken one stops us before anything runs.
            checks = [("memcached", args.memcached_port), ("slapd", args.slapd_port)]
            if args.serve:
                checks.append(("HTTP", args.http_port))
            for name, port in checks:
                if not port_is_free(LOOPBACK, port):
                    raise port_in_use(name, port)
            memcached.prepare()
            memcached.start()
            slapd.prepare()
            slapd.start()
        except PortInUseError as exc:  # taken between our check and the server's bind
            print(f"devstack: {port_in_use(exc.name, exc.port)}", file=sys.stderr)
            return 1
        except Exception as exc:
            print(f"devstack: {exc}", file=sys.stderr)
            return 1
        print(f"devstack: memcached on {memcached.url}, slapd on {slapd.url} (state in {var})",
              flush=True)
        if args.serve:
            command = serve_command(args.serve, memcached, slapd, args.http_port,
                                    var / "secret")
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

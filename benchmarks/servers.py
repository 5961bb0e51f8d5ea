"""Private memcached and slapd for the benchmarks, pinned to one CPU core, and their data.

Pinning matters on this machine: a loopback round trip between two cores costs ~75-80 us,
within one core ~7 us (NOTES.md). The benchmark process pins itself with
:func:`pin_to` and starts every server under ``taskset -c CPU`` so that client and servers
share one core and figures are stable.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
from pathlib import Path

from repoze_who_memcached.testing import (
    SAMPLE_LDIF,
    SAMPLE_SUFFIX,
    MemcachedServer,
    SlapdServer,
)

TASKSET = "/usr/bin/taskset"
PEOPLE_DN = f"ou=people,{SAMPLE_SUFFIX}"
READER_DN = f"cn=reader,ou=system,{SAMPLE_SUFFIX}"
READER_PASSWORD = "reader-secret"


# Every benchmark CPU decision in one place: servers and the measuring process share this one.
BENCH_CPU = 0


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_to(cpus: set[int] | list[int]) -> None:
    """Pin the calling thread (and the threads it starts later) to ``cpus``."""
    os.sched_setaffinity(0, set(cpus))


def repin(pid: int | None, cpus: set[int]) -> bool:
    """Move every thread of process ``pid`` (one of ours) to ``cpus``; False if it is gone.

    ``sched_setaffinity`` of a pid moves that one thread only: memcached and slapd run
    several, so each of ``/proc/PID/task`` is moved."""
    if pid is None:
        return False
    try:
        tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return False
    for task in tasks:
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            os.sched_setaffinity(task, cpus)
    return True


class PinnedElsewhere:
    """``with PinnedElsewhere(pids, cpus):`` runs the block with those processes' threads on
    ``cpus``, and puts them back on their own CPUs after it."""

    def __init__(self, pids: list[int | None], cpus: set[int]) -> None:
        self.pids = [p for p in pids if p is not None]
        self.cpus = cpus
        self.before: dict[int, set[int]] = {}

    def __enter__(self) -> PinnedElsewhere:
        for pid in self.pids:
            self.before[pid] = os.sched_getaffinity(pid)
            repin(pid, self.cpus)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for pid, cpus in self.before.items():
            repin(pid, cpus)


def _pinned(command: list[str], cpus: str | None) -> list[str]:
    if cpus is None or not os.path.exists(TASKSET):
        return command
    return [TASKSET, "-c", cpus, *command]


class PinnedMemcached(MemcachedServer):
    """:class:`MemcachedServer` started under ``taskset -c CPUS``; one worker thread."""

    def __init__(self, *, cpus: str | None = str(BENCH_CPU), memory_mb: int = 64,
                 threads: int = 1) -> None:
        super().__init__(memory_mb=memory_mb)
        self.cpus = cpus
        self.threads = threads

    def command(self) -> list[str]:
        cmd = super().command()
        if "-t" in cmd:
            cmd[cmd.index("-t") + 1] = str(self.threads)
        return _pinned(cmd, self.cpus)

    def stats(self) -> dict[str, str]:
        reply = self.raw_command(b"stats\r\n").decode("ascii", "replace")
        values = {}
        for line in reply.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "STAT":
                values[parts[1]] = parts[2]
        return values


class PinnedSlapd(SlapdServer):
    """:class:`SlapdServer` started under ``taskset -c CPUS``."""

    def __init__(self, *, cpus: str | None = str(BENCH_CPU), ldif: Path | None = None) -> None:
        super().__init__(ldif=ldif)
        self.cpus = cpus

    def command(self) -> list[str]:
        return _pinned(super().command(), self.cpus)

    @property
    def indexed(self) -> bool:
        """Whether the test server's config has equality indexes on ``uid`` and
        ``objectClass``, as any real directory has: without them every search scans all
        10**4 entries, and the uncached figures would measure the missing index, not LDAP."""
        text = self._config_text()
        return "index uid eq" in text and "index objectClass eq" in text

    def user_binds(self, login: str | None = None) -> int:
        """Successful binds as benchmark users (all of them, or one login's)."""
        if login is not None:
            return self.bind_count(user_dn(login))
        return self.bind_count() - self.bind_count(READER_DN)


def stop_all(group: list[MemcachedServer | SlapdServer]) -> None:
    """Send SIGTERM to every server at once (memcached takes ~0.7 s to exit; in turn, a
    dozen would take seconds), then let each one's own ``stop`` wait for it."""
    for server in group:
        process = server.process
        if process is not None and process.poll() is None:
            process.terminate()
    for server in group:
        server.stop()


# ------------------------------------------------------------------ benchmark users


def login_of(index: int) -> str:
    return f"u{index:07d}"


def password_of(index: int) -> str:
    return f"pw-{index:07d}"


def user_dn(login: str) -> str:
    return f"uid={login},{PEOPLE_DN}"


def ssha(password: str) -> str:
    """``{SSHA}`` as ``slappasswd -h {SSHA}`` makes it (SHA-1 over password + 4-byte salt)."""
    salt = secrets.token_bytes(4)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()  # noqa: S324 - LDAP's SSHA
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def write_benchmark_ldif(path: Path, users: int) -> Path:
    """The packaged sample directory (alice, bob, the reader account...) plus ``users``
    generated people ``u0000000``.. with passwords ``pw-0000000``.., loaded by slapadd."""
    lines = [SAMPLE_LDIF.read_text(encoding="utf-8").rstrip("\n"), ""]
    for index in range(users):
        login = login_of(index)
        lines += [
            f"dn: {user_dn(login)}",
            "objectClass: inetOrgPerson",
            f"uid: {login}",
            f"cn: Benchmark User {index}",
            f"sn: User{index}",
            f"mail: {login}@example.org",
            f"userPassword: {ssha(password_of(index))}",
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

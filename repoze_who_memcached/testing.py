"""Private memcached, twemproxy and slapd servers for tests, demos and your own test suites.

Each server runs from Debian's package, listens on a free loopback port, keeps its state in
a temporary folder and is stopped (by its own pid) when the context manager exits::

    from repoze_who_memcached.testing import MemcachedServer

    with MemcachedServer() as memcached:
        plugin = make_plugin(memcached_urls=memcached.url, ...)

Servers can also be paused (SIGSTOP, to imitate a hung server), resumed, stopped and
started again on the same port mid-test. A server given a port some other process listens
on raises :class:`PortInUseError` (naming the port) and leaves nothing running: it is never
reported started while someone else answers on its port. Nothing here is a fake: the
point is to test against the real thing.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
MEMCACHED_PROGRAM = "/usr/bin/memcached"


# The ports of `make serve` (development.ini): tests never take them.
DEV_PORTS = frozenset({6543, 22122, 3890})


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on now, below the kernel's ephemeral range.

    Servers here may be stopped and started again on the same port mid-test. A port from the
    ephemeral range (what binding port 0 gives) can meanwhile be handed to an outgoing
    connection as its source port (every LDAP login opens one), and the restart then fails
    with "Address already in use". Ports below the range are never handed out like that.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(low, 10001))
        if port in DEV_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # the kernel's pick
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc=None) -> None:
    """Block until something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.01)


class PortInUseError(RuntimeError):
    """A server's port is taken by a process that is not the server we started.

    The message names the server, the port, the other process when /proc tells (only
    processes of the same user are visible), and ``hint``: how the caller picks another.
    """

    def __init__(self, name: str, host: str, port: int, hint: str) -> None:
        self.name, self.host, self.port, self.hint = name, host, port, hint
        owners = listener_pids(port)
        owner = f" (pid {', '.join(map(str, owners))})" if owners else ""
        super().__init__(
            f"{name}: port {port} on {host} is already in use by another process{owner}. {hint}"
        )


# Linux shows which process holds which listening socket; elsewhere we cannot check.
CAN_SEE_LISTENERS = os.path.exists("/proc/net/tcp")


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (a bind test, as the server binds).

    ``SO_REUSEADDR``, as memcached and slapd set it: a port left in TIME_WAIT by an earlier
    run counts as free, a port some process listens on (on this address or on all) does not.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError:
            return False
    return True


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets (IPv4 and IPv6) listening on ``port``, from /proc/net."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 the inode.
                    if (len(fields) > 9 and fields[3] == "0A"
                            and int(fields[1].rsplit(":", 1)[1], 16) == port):
                        inodes.add(fields[9])
        except OSError:
            continue
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process ``pid`` holds open (empty if we may not look)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on TCP ``port`` (Linux /proc)."""
    listening = _listening_inodes(port)
    return bool(listening) and bool(listening & _socket_inodes(pid))


def listener_pids(port: int) -> list[int]:
    """The processes we can see that listen on TCP ``port``, for error messages."""
    listening = _listening_inodes(port)
    if not listening:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and listening & _socket_inodes(int(entry.name)):
            pids.append(int(entry.name))
    return sorted(pids)


def make_self_signed_certificate(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for ``hostname`` and 127.0.0.1; returns both paths.

    The certificate is its own CA, so clients verify it with ``ca_file = cert.pem``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class _ServerProcess:
    """Start/stop/pause plumbing shared by the servers below."""

    name = "server"

    def __init__(self, host: str = LOOPBACK, port: int | None = None, workdir: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"rwm-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self._log = None

    # -- to be provided by subclasses ------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create files the server needs before its first start."""

    # -- life cycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def port_hint(self) -> str:
        """How to pick another port, for :class:`PortInUseError` (callers may say better)."""
        return (f"give {type(self).__name__}(port=...) another port, or no port for a free "
                "one (repoze_who_memcached.testing.free_port)")

    def check_port_free(self) -> None:
        """Raise :class:`PortInUseError` if another process listens on our port already.

        A server started on a taken port dies with "Address already in use", while a probe
        that connects is answered by the other process: without this check (and the one
        after the start) we would report a server started that is not ours.
        """
        if not port_is_free(self.host, self.port):
            raise PortInUseError(self.name, self.host, self.port, self.port_hint())

    def start(self, timeout: float = 10.0) -> _ServerProcess:
        """Start the server and return once it listens; it is ours, alive, or we raise.

        Before: the port must be free. After: our child must still run and hold the
        listening socket (checked in /proc), so a process that took the port meanwhile is
        never mistaken for ours. On any failure the child is stopped: nothing is left.
        """
        if self.running:
            return self
        self.check_port_free()
        self._log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for_port(self.host, self.port, timeout, self.process)
            if CAN_SEE_LISTENERS and not listens_on(self.process.pid, self.port):
                raise PortInUseError(self.name, self.host, self.port, self.port_hint())
            if self.process.poll() is not None:
                raise RuntimeError(f"exited with status {self.process.returncode}")
        except PortInUseError:
            self.stop()
            raise
        except Exception:
            self.stop()
            log = self.read_log()[-2000:]
            if "Address already in use" in log or not port_is_free(self.host, self.port):
                raise PortInUseError(self.name, self.host, self.port, self.port_hint()) from None
            raise RuntimeError(f"{self.name} failed to start: {log}") from None
        return self

    def stop(self) -> None:
        """Terminate the server (and resume it first if it was paused)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung server)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def read_log(self) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        self.prepare()
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class MemcachedServer(_ServerProcess):
    """A private memcached (Debian's ``/usr/bin/memcached``) on a loopback port.

    ``tls=True`` starts it with ``-Z`` and a self-signed certificate made on the spot;
    ``ca_file`` is then the file clients must trust.
    """

    name = "memcached"

    def __init__(
        self,
        host: str = LOOPBACK,
        port: int | None = None,
        *,
        tls: bool = False,
        memory_mb: int = 64,
        workdir: Path | None = None,
        program: str = MEMCACHED_PROGRAM,
    ) -> None:
        super().__init__(host, port, workdir)
        self.tls = tls
        self.memory_mb = memory_mb
        self.program = program
        self.cert_file: Path | None = None
        self.key_file: Path | None = None

    @property
    def url(self) -> str:
        """``host:port``, the form ``memcached_urls`` takes."""
        return f"{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        return self.cert_file

    def prepare(self) -> None:
        if not os.path.exists(self.program):
            raise RuntimeError(f"{self.program} not found: apt-get install memcached")
        if self.tls and self.cert_file is None:
            self.cert_file, self.key_file = make_self_signed_certificate(self.workdir / "tls")

    def command(self) -> list[str]:
        cmd = [self.program, "-l", self.host, "-p", str(self.port), "-U", "0",
               "-m", str(self.memory_mb), "-t", "2"]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        if self.tls:
            cmd += ["-Z", "-o", f"ssl_chain_cert={self.cert_file},ssl_key={self.key_file}"]
        return cmd

    def flush(self) -> None:
        """``flush_all`` over a raw socket (plain-text servers only)."""
        self.raw_command(b"flush_all\r\n")

    def raw_command(self, command: bytes) -> bytes:
        """Send one raw protocol command and return the reply (plain-text servers only)."""
        with socket.create_connection((self.host, self.port), timeout=5) as s:
            s.sendall(command)
            reply = b""
            while not reply.endswith((b"END\r\n", b"OK\r\n", b"STORED\r\n", b"NOT_STORED\r\n",
                                      b"DELETED\r\n", b"NOT_FOUND\r\n", b"ERROR\r\n")):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply

    def stored_keys(self) -> list[str]:
        """Every key the server holds (``lru_crawler metadump all``), for attack tests."""
        with socket.create_connection((self.host, self.port), timeout=5) as s:
            s.sendall(b"lru_crawler metadump all\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        from urllib.parse import unquote

        keys = []
        for line in data.decode().splitlines():
            if line.startswith("key="):
                keys.append(unquote(line.split()[0][4:]))
        return keys

    def get_raw(self, key: str) -> bytes | None:
        reply = self.raw_command(b"get " + key.encode() + b"\r\n")
        if not reply.startswith(b"VALUE "):
            return None
        header, _, rest = reply.partition(b"\r\n")
        length = int(header.split()[3])
        return rest[:length]

    def set_raw(self, key: str, value: bytes, flags: int = 0, expire: int = 0) -> None:
        """Write bytes straight into memcached, as an attacker with network access could."""
        reply = self.raw_command(
            b"set %s %d %d %d\r\n%s\r\n" % (key.encode(), flags, expire, len(value), value)
        )
        if reply != b"STORED\r\n":
            raise RuntimeError(f"set failed: {reply!r}")


NUTCRACKER_PROGRAM = "/usr/sbin/nutcracker"


class NutcrackerServer(_ServerProcess):
    """A private twemproxy (Debian's ``nutcracker``) on a loopback port, in front of
    ``backends`` (``host:port`` of memcached servers, e.g. :attr:`MemcachedServer.url`).

    The pool is configured as ``memcached_proxy = twemproxy`` needs it: ``hash_tag: "{}"``
    (a user's keys on one backend) and ketama. ``auto_eject_hosts`` defaults to False, the
    setting under which no invalidation is lost (README: "Behind twemproxy"). ``timeout_ms``
    bounds every backend call (twemproxy has no limit without it: a hung backend would hang
    its users' requests). Its JSON stats are on :attr:`stats_port` (:meth:`stats`).
    """

    name = "nutcracker"

    def __init__(
        self,
        backends: list[str],
        host: str = LOOPBACK,
        port: int | None = None,
        *,
        auto_eject_hosts: bool = False,
        timeout_ms: int = 400,
        server_failure_limit: int = 2,
        server_retry_timeout_ms: int = 2000,
        stats_port: int | None = None,
        workdir: Path | None = None,
        program: str = NUTCRACKER_PROGRAM,
    ) -> None:
        super().__init__(host, port, workdir)
        self.backends = list(backends)
        self.auto_eject_hosts = auto_eject_hosts
        self.timeout_ms = timeout_ms
        self.server_failure_limit = server_failure_limit
        self.server_retry_timeout_ms = server_retry_timeout_ms
        self.stats_port = stats_port or free_port(host)
        self.program = program

    @property
    def url(self) -> str:
        """``host:port``, what ``memcached_urls`` takes (with ``memcached_proxy``)."""
        return f"{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.workdir / "nutcracker.yml"

    def config_text(self) -> str:
        servers = "".join(f"    - {b}:1 backend{i}\n" for i, b in enumerate(self.backends))
        return (
            "pool:\n"
            f"  listen: {self.host}:{self.port}\n"
            "  hash: fnv1a_64\n"
            '  hash_tag: "{}"\n'
            "  distribution: ketama\n"
            f"  timeout: {self.timeout_ms}\n"
            f"  auto_eject_hosts: {'true' if self.auto_eject_hosts else 'false'}\n"
            f"  server_failure_limit: {self.server_failure_limit}\n"
            f"  server_retry_timeout: {self.server_retry_timeout_ms}\n"
            "  servers:\n" + servers
        )

    def prepare(self) -> None:
        if not os.path.exists(self.program):
            raise RuntimeError(f"{self.program} not found: apt-get install nutcracker")
        self.config_file.write_text(self.config_text())

    def command(self) -> list[str]:
        return [self.program, "-c", str(self.config_file), "-s", str(self.stats_port),
                "-a", self.host, "-v", "4"]

    def check_port_free(self) -> None:
        super().check_port_free()
        if not port_is_free(self.host, self.stats_port):
            raise PortInUseError(self.name, self.host, self.stats_port, self.port_hint())

    def stats(self) -> dict[str, Any]:
        """twemproxy's stats (one JSON document per connection to its stats port)."""
        import json

        with socket.create_connection((self.host, self.stats_port), timeout=5) as s:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data)

    def backend_for(self, key: str, servers: list[MemcachedServer]) -> MemcachedServer | None:
        """Which of ``servers`` holds ``key`` (asked of each directly: for tests)."""
        found = [server for server in servers if server.running and server.get_raw(key)]
        return found[0] if len(found) == 1 else None


SLAPD_PROGRAM = "/usr/sbin/slapd"
SLAPADD_PROGRAM = "/usr/sbin/slapadd"
SLAPINDEX_PROGRAM = "/usr/sbin/slapindex"


def _indexing(config: str | None) -> list[str] | None:
    """What of a slapd.conf decides the indexes' content (not the per-run root password)."""
    if config is None:
        return None
    return [line for line in config.splitlines() if not line.startswith("rootpw")]
SAMPLE_SUFFIX = "dc=example,dc=org"
SAMPLE_LDIF = Path(__file__).parent / "data" / "sample_users.ldif"
# The service account in the sample data (read access to everything but password hashes).
SAMPLE_READER_DN = "cn=reader,ou=system," + SAMPLE_SUFFIX
SAMPLE_READER_PASSWORD = "reader-secret"  # noqa: S105 - public test data
# login -> password of the sample users (``twin`` matches two entries: it must never log in).
SAMPLE_USERS = {
    "alice": "wonderland",
    "bob": "builder",
    "zo\u00eb": "p\u00e4ssw\u00f6rd",
    "carol": "carol-pw",
    "twin": "twin-password",
}


class SlapdServer(_ServerProcess):
    """A private OpenLDAP server (Debian's ``/usr/sbin/slapd``) on a loopback port.

    Its ``slapd.conf``, database and log live in ``workdir``. The data (``ldif``; by default
    the packaged sample users, see ``data/sample_users.ldif``) is loaded offline with
    ``slapadd`` before the first start only, so a persistent ``workdir`` keeps its data over
    restarts. slapd runs in the foreground (``-d 256``: the "stats" log level, which also logs
    every operation to ``slapd.log``; :meth:`bind_count` reads it), so the process we manage is
    slapd itself and SIGSTOP/SIGTERM reach it directly.

    ``tls=True`` adds a self-signed certificate (``ca_file`` is what clients must trust) for
    STARTTLS and ``security simple_bind=128``: a simple bind with a password is then refused
    (confidentialityRequired) unless the connection is encrypted.

    ACLs: anyone may authenticate against ``userPassword`` (nobody may read it); anyone may
    see the entries and ``uid`` of ``ou=people``; ``cn=reader,ou=system,SUFFIX`` and each user
    (for their own entry) may read the rest. The root DN bypasses ACLs.
    """

    name = "slapd"

    def __init__(
        self,
        host: str = LOOPBACK,
        port: int | None = None,
        *,
        workdir: Path | None = None,
        suffix: str = SAMPLE_SUFFIX,
        ldif: str | os.PathLike[str] | None = None,
        tls: bool = False,
        program: str = SLAPD_PROGRAM,
    ) -> None:
        super().__init__(host, port, workdir)
        if ldif is None and suffix != SAMPLE_SUFFIX:
            raise ValueError(
                f"the sample users live under {SAMPLE_SUFFIX}; give ldif= for {suffix}"
            )
        self.suffix = suffix
        self.ldif = Path(ldif) if ldif is not None else SAMPLE_LDIF
        self.tls = tls
        self.program = program
        self.root_dn = f"cn=admin,{suffix}"
        self.root_password = "admin-" + secrets.token_urlsafe(12)
        self.users_base_dn = f"ou=people,{suffix}"
        self.groups_base_dn = f"ou=groups,{suffix}"
        self.reader_dn = f"cn=reader,ou=system,{suffix}"
        self.reader_password = SAMPLE_READER_PASSWORD
        self.cert_file: Path | None = None
        self.key_file: Path | None = None

    @property
    def url(self) -> str:
        return f"ldap://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        """The self-signed certificate clients must trust (``tls=True`` only)."""
        return self.cert_file

    @property
    def config_file(self) -> Path:
        return self.workdir / "slapd.conf"

    @property
    def db_dir(self) -> Path:
        return self.workdir / "db"

    def prepare(self) -> None:
        """Write ``slapd.conf`` (every time: cheap) and load the data (the first time only).

        Data kept from an earlier run under a different ``slapd.conf`` (say, from before an
        index was added) is re-indexed: slapd answers equality searches from its indexes
        only, so an index it never built finds nothing.
        """
        for program in (self.program, SLAPADD_PROGRAM):
            if not os.path.exists(program):
                raise RuntimeError(f"{program} not found: apt-get install slapd ldap-utils")
        if self.tls and self.cert_file is None:
            self.cert_file, self.key_file = make_self_signed_certificate(self.workdir / "tls")
        self.db_dir.mkdir(parents=True, exist_ok=True)
        config = self._config_text()
        previous = (self.config_file.read_text(encoding="utf-8")
                    if self.config_file.exists() else None)
        self.config_file.write_text(config, encoding="utf-8")
        self.config_file.chmod(0o600)  # it holds the root password
        have_data = (self.db_dir / "data.mdb").exists()
        if have_data and _indexing(previous) != _indexing(config) and not self.running:
            result = subprocess.run(
                [SLAPINDEX_PROGRAM, "-q", "-f", str(self.config_file)],
                capture_output=True, text=True, check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"slapindex failed ({result.returncode}): {result.stderr}")
        if not have_data:
            result = subprocess.run(
                [SLAPADD_PROGRAM, "-q", "-f", str(self.config_file), "-l", str(self.ldif)],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                for leftover in self.db_dir.iterdir():
                    leftover.unlink()
                raise RuntimeError(f"slapadd failed ({result.returncode}): {result.stderr}")

    def start(self, timeout: float = 10.0) -> SlapdServer:
        if not self.running:
            self.check_port_free()  # before slapadd: a taken port fails at once
        self.prepare()
        super().start(timeout)
        return self

    def command(self) -> list[str]:
        # -d keeps slapd in the foreground; 256 is the "stats" level (connections, binds,
        # searches and their results), which is what bind_count() reads.
        return [self.program, "-f", str(self.config_file), "-h", f"{self.url}/", "-d", "256"]

    def bind_count(self, dn: str | None = None, *, settle: float = 0.02) -> int:
        """How many binds with a DN (anonymous ones not counted) have succeeded so far.

        ``dn`` counts only binds as that DN (compared as slapd logs it: normalised, so
        lower-case attribute types and values as given). slapd writes its log just after it
        answers, so this waits until the log has been quiet for ``settle`` seconds.
        """
        self._wait_for_quiet_log(settle)
        bind_dns: dict[tuple[str, str], str] = {}
        count = 0
        for line in self.read_log().splitlines():
            parts = line.split()
            conn = next((p for p in parts if p.startswith("conn=")), None)
            op = next((p for p in parts if p.startswith("op=")), None)
            if conn is None or op is None:
                continue
            if " BIND dn=" in line and "method=" in line:
                bind_dns[(conn, op)] = line.split(' BIND dn="', 1)[1].rsplit('" method=', 1)[0]
            elif " RESULT tag=97 err=0 " in line:
                bound = bind_dns.get((conn, op), "")
                if bound and (dn is None or bound.lower() == dn.lower()):
                    count += 1
        return count

    def _wait_for_quiet_log(self, settle: float, limit: float = 1.0) -> None:
        path = self.workdir / f"{self.name}.log"
        deadline = time.monotonic() + limit
        size = -1
        while time.monotonic() < deadline:
            new_size = path.stat().st_size if path.exists() else 0
            if new_size == size:
                return
            size = new_size
            time.sleep(settle)

    def _config_text(self) -> str:
        schema = "/etc/ldap/schema"
        tls = ""
        if self.tls:
            tls = (
                f'TLSCertificateFile "{self.cert_file}"\n'
                f'TLSCertificateKeyFile "{self.key_file}"\n'
                "# a simple bind with a password needs an encrypted connection\n"
                "security simple_bind=128\n"
            )
        return f"""\
# Written by repoze_who_memcached.testing.SlapdServer; rewritten on every start.
include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/nis.schema
include {schema}/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile "{self.workdir / "slapd.pid"}"
argsfile "{self.workdir / "slapd.args"}"
{tls}
database mdb
maxsize 67108864
suffix "{self.suffix}"
rootdn "{self.root_dn}"
rootpw "{self.root_password}"
directory "{self.db_dir}"
# Equality indexes, as any real directory has: without them every login scans every entry.
index objectClass eq
index uid eq
index member eq

access to attrs=userPassword
    by anonymous auth
    by * none
access to dn.base="{self.suffix}" attrs=entry,objectClass
    by * read
access to dn.subtree="{self.users_base_dn}" attrs=entry,uid,objectClass
    by * read
access to *
    by dn.exact="{self.reader_dn}" read
    by self read
    by * none
"""

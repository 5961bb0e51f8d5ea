"""``make serve`` (repoze_who_memcached.devstack): the ports are chosen with make variables,
and a taken port stops it with a message naming the port and the variable, with nothing
left running (issue 17, point 7). Real memcached, slapd, waitress and an HTTP client."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from repoze_who_memcached.testing import SAMPLE_USERS, free_port, listener_pids

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)


def http_get(port: int, login: str | None = None, password: str = "") -> int:
    headers = {}
    if login is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{login}:{password}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", "/?format=json", headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def processes_with_args(*args: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if all(a in argv for a in args):
                found.append(int(proc.name))
    return found


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain socket listening on a free loopback port: the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", free_port()))
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


def make_serve(tmp_path: Path, ports: dict[str, int], **popen) -> subprocess.Popen:
    """``make serve`` of the checkout with these ports, its state in ``tmp_path``.

    It runs in the venv running these tests, which has everything installed already (a nox
    venv of another Python too): its stamp says so, or make would install into it first.
    """
    stamp = PYTHON.parent.parent / ".installed"
    if not stamp.exists():
        stamp.touch()
    return subprocess.Popen(
        ["make", "--no-print-directory", "-C", str(ROOT), "serve", f"SERVE_VAR={tmp_path}",
         f"PYTHON={PYTHON}", f"VENV={PYTHON.parent.parent}",
         *(f"{name}={port}" for name, port in ports.items())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        **popen,
    )


def nothing_left(ports: dict[str, int], tmp_path: Path) -> None:
    assert not processes_with_args("-p", str(ports["MEMCACHED_PORT"]))
    assert not processes_with_args("-f", str(tmp_path / "slapd" / "slapd.conf"))
    assert not processes_with_args("serve", "development.ini", f"http_port={ports['HTTP_PORT']}")


@pytest.mark.slow
@pytest.mark.parametrize("taken", ["MEMCACHED_PORT", "SLAPD_PORT", "HTTP_PORT"])
def test_a_taken_port_stops_make_serve_naming_it(tmp_path, listener, taken):
    ports = {"MEMCACHED_PORT": free_port(), "SLAPD_PORT": free_port(), "HTTP_PORT": free_port()}
    ports[taken] = listener.getsockname()[1]
    process = make_serve(tmp_path, ports)
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    assert process.returncode != 0, output
    assert f"port {ports[taken]} " in output
    assert f"make serve {taken}=N" in output
    assert "memcached on" not in output  # never reported started
    nothing_left(ports, tmp_path)
    assert listener_pids(ports[taken]) == [os.getpid()]


@pytest.mark.slow
def test_make_serve_on_chosen_ports_answers_401_200_401(tmp_path):
    ports = {"MEMCACHED_PORT": free_port(), "SLAPD_PORT": free_port(), "HTTP_PORT": free_port()}
    process = make_serve(tmp_path, ports)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status = http_get(ports["HTTP_PORT"])
                break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "make serve did not serve in 60 s"
                time.sleep(0.1)
        assert status == 401
        assert http_get(ports["HTTP_PORT"], "alice", SAMPLE_USERS["alice"]) == 200
        assert http_get(ports["HTTP_PORT"], "alice", "wrong") == 401
        # The servers are on the chosen ports and are devstack's own children.
        assert processes_with_args("-p", str(ports["MEMCACHED_PORT"]))
        assert processes_with_args("-f", str(tmp_path / "slapd" / "slapd.conf"))
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as in a terminal
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate(timeout=10)
    assert f"memcached on 127.0.0.1:{ports['MEMCACHED_PORT']}" in output
    assert f"slapd on ldap://127.0.0.1:{ports['SLAPD_PORT']}" in output
    assert "memcached and slapd stopped" in output
    nothing_left(ports, tmp_path)

"""The whole stack: our LDAP plugins wrapped by the cache, real slapd and real memcached,
loaded from a development.ini-like pipeline, in-process (WebTest) and under `paster serve`."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SECRET
from ldap_fixtures import ldap_options
from paste.deploy import loadapp
from test_pipeline import basic
from webtest import TestApp

from repoze_who_memcached import make_plugin
from repoze_who_memcached.ldap import (
    DEFAULT_RETRY_AFTER,
    LDAP_DN_KEY,
    make_authenticator,
    make_metadata_provider,
)
from repoze_who_memcached.testing import free_port, wait_for_port

ROOT = Path(__file__).parent.parent


def stack_ini(tmp_path: Path, slapd, memcached, port: int = 0, extra: str = "") -> Path:
    """development.ini with the ports and secret of this test's servers."""
    text = (ROOT / "development.ini").read_text()
    text = text.replace("ldap://127.0.0.1:3890", slapd.url)
    text = text.replace("127.0.0.1:22122", memcached.url)
    text = text.replace("port = 6543", f"port = {port or free_port()}")
    (tmp_path / "var").mkdir(exist_ok=True)
    (tmp_path / "var" / "secret").write_text(SECRET + "\n")
    text = text.replace("stats_log_interval = 60", f"stats_log_interval = 60\n{extra}")
    path = tmp_path / "development.ini"
    path.write_text(text)
    return path


def test_second_request_makes_no_ldap_bind(slapd, memcached):
    """Issue: the LDAP authenticator wrapped by the cache binds once per identity per TTL."""
    authenticator = make_authenticator(**ldap_options(slapd, userid_attribute="uid"))
    metadata = make_metadata_provider(**ldap_options(slapd, attributes="mail cn"))
    cache = make_plugin(secret=SECRET, memcached_urls=memcached.url,
                        authenticator_name="ldap", mdprovider_name="md")
    cache.bind({"ldap": authenticator, "md": metadata})
    binds_before = slapd.bind_count()
    first = {"login": "alice", "password": "wonderland"}
    assert cache.authenticate({}, first) == "alice"
    first["repoze.who.userid"] = "alice"
    cache.add_metadata({}, first)
    binds_after_miss = slapd.bind_count()
    assert binds_after_miss > binds_before
    second = {"login": "alice", "password": "wonderland"}
    assert cache.authenticate({}, second) == "alice"
    second["repoze.who.userid"] = "alice"
    cache.add_metadata({}, second)
    assert slapd.bind_count() == binds_after_miss
    assert authenticator.counters.snapshot()["user_binds"] == 1
    assert second == first
    assert second[LDAP_DN_KEY] == "uid=alice,ou=people,dc=example,dc=org"
    assert cache.authenticate({}, {"login": "alice", "password": "nope"}) is None


def test_development_ini_in_process(tmp_path, slapd, memcached):
    app = TestApp(loadapp(f"config:{stack_ini(tmp_path, slapd, memcached)}"))
    challenge = app.get("/", status=401)
    assert challenge.headers["WWW-Authenticate"] == 'Basic realm="repoze_who_memcached demo"'
    app.get("/", headers=basic("alice", "wrong"), status=401)
    app.get("/", headers=basic("twin", "twin-password"), status=401)
    app.get("/", headers=basic("*", "wonderland"), status=401)
    first = app.get("/?format=json", headers=basic("alice", "wonderland")).json
    assert first["userid"] == "alice"
    assert first["cache"]["cache"] == {"authenticate": "miss", "add_metadata": "miss"}
    assert first["identity"]["mail"] == ["alice@example.org", "a.liddell@example.org"]
    assert sorted(first["identity"]["groups"]) == ["admins", "staff"]
    second = app.get("/?format=json", headers=basic("alice", "wonderland")).json
    assert second["cache"]["cache"] == {"authenticate": "hit", "add_metadata": "hit"}
    assert second["identity"] == first["identity"]
    html = app.get("/", headers=basic("alice", "wonderland"))
    assert "Hello, alice" in html.text


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_development_ini_unicode_login(tmp_path, slapd, memcached, encoding):
    app = TestApp(loadapp(f"config:{stack_ini(tmp_path, slapd, memcached)}"))
    body = app.get("/?format=json", headers=basic("zoë", "pässwörd", encoding)).json
    assert body["userid"] == "zoë"
    app.get("/", headers=basic("zoë", "passwörd", encoding), status=401)


def test_development_ini_ldap_down_is_401_not_500(tmp_path, private_slapd, memcached):
    app = TestApp(loadapp(f"config:{stack_ini(tmp_path, private_slapd, memcached)}"))
    app.get("/", headers=basic("alice", "wonderland"))
    private_slapd.stop()
    try:
        # Cached: still in. Not cached: 401, never a 500.
        app.get("/", headers=basic("alice", "wonderland"), status=200)
        app.get("/", headers=basic("bob", "builder"), status=401)
    finally:
        private_slapd.start()
    time.sleep(DEFAULT_RETRY_AFTER + 0.1)  # the LDAP plugins leave a failed directory alone
    app.get("/", headers=basic("bob", "builder"), status=200)


def _get(port: int, path: str, auth: tuple[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {}
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


@pytest.mark.slow
def test_paster_serve_development_ini(tmp_path, slapd, memcached):
    port = free_port()
    ini = stack_ini(tmp_path, slapd, memcached, port)
    paster = Path(sys.executable).parent / "paster"
    log = open(tmp_path / "paster.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(paster), "serve", str(ini)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp_path, start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
        response, _ = _get(port, "/")
        assert response.status == 401
        assert response.getheader("WWW-Authenticate") == 'Basic realm="repoze_who_memcached demo"'
        response, _ = _get(port, "/", ("alice", "wrong"))
        assert response.status == 401
        response, body = _get(port, "/?format=json", ("alice", "wonderland"))
        assert response.status == 200
        assert json.loads(body)["cache"]["cache"]["authenticate"] == "miss"
        response, body = _get(port, "/?format=json", ("alice", "wonderland"))
        assert response.status == 200
        facts = json.loads(body)
        assert facts["userid"] == "alice"
        assert facts["cache"]["cache"]["authenticate"] == "hit"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()
    output = (tmp_path / "paster.log").read_text()
    # The ini's logging shows hits and misses at DEBUG, and never a password.
    assert re.search(r"DEBUG.*cache cache: authenticate miss", output), output[-2000:]
    assert re.search(r"DEBUG.*cache cache: authenticate hit", output), output[-2000:]
    assert "wonderland" not in output


@pytest.mark.slow
def test_make_serve_devstack_starts_and_stops_everything(tmp_path):
    """`python -m repoze_who_memcached.devstack` (what `make serve` runs) on spare ports."""
    mc_port, ldap_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "repoze_who_memcached.devstack", "--var", str(tmp_path / "var"),
         "--memcached-port", str(mc_port), "--slapd-port", str(ldap_port), "--",
         sys.executable, "-c", "import time; time.sleep(60)"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port("127.0.0.1", mc_port, timeout=20, proc=proc)
        wait_for_port("127.0.0.1", ldap_port, timeout=20, proc=proc)
        assert (tmp_path / "var" / "secret").stat().st_mode & 0o777 == 0o600
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "memcached and slapd stopped" in output
    for port in (mc_port, ldap_port):
        with pytest.raises(OSError):
            wait_for_port("127.0.0.1", port, timeout=0.5)
    # Running it again works, with the state kept under var/.
    again = subprocess.run(
        [sys.executable, "-m", "repoze_who_memcached.devstack", "--var", str(tmp_path / "var"),
         "--memcached-port", str(mc_port), "--slapd-port", str(ldap_port), "--",
         sys.executable, "-c", "print('child ran')"],
        capture_output=True, text=True, timeout=30,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "child ran" in again.stdout
    time.sleep(0.1)

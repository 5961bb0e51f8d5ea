"""``paster create -t repoze_who_memcached_pyramid``: the LDAP project as a Pyramid app.

Two layers, reusing test_scaffold.py's helpers:

* from the project venv (the editable checkout): the project's files; its ini files carry
  the LDAP project's filter options as ``who.*`` settings (hostile values exactly); its app,
  loaded by PasteDeploy against the session's slapd and memcached, answers 401, 200, 403
  and caches;
* slow: from our wheel in a fresh venv, the generated project's own ``make serve`` (offline)
  serves it over real HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pyramid")

from paste.deploy import loadapp
from test_pipeline import basic
from test_scaffold import (
    EXPECTED_FILES,
    HOSTILE_BASE_DN,
    HOSTILE_PASSWORD,
    HOSTILE_VARS,
    PASTER,
    SAMPLE,
    _http_get,
    _pids_with_args,
    _wait_for_http,
    fresh_venv,  # noqa: F401 - a fixture
    offline_environment,
    project_files,
    var_args,
    venv_with_project_deps,
)
from webtest import TestApp

from repoze_who_memcached.scaffold import PYRAMID_TEMPLATE_NAME, pyramid_ini
from repoze_who_memcached.testing import free_port


def pyramid_create(paster: Path, where: Path, name: str, *args: str,
                   env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(paster), "create", "-t", PYRAMID_TEMPLATE_NAME, "--no-interactive", name, *args],
        cwd=where, env=env, capture_output=True, text=True, timeout=120,
        start_new_session=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def hostile_project(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("pyramid")
    pyramid_create(PASTER, where, "Pyr-Demo", *var_args(HOSTILE_VARS))
    return where / "Pyr-Demo"


def test_the_project_has_the_ldap_projects_files(hostile_project):
    assert project_files(hostile_project) == {n.format(package="pyrdemo") for n in EXPECTED_FILES}
    app_code = (hostile_project / "pyrdemo" / "__init__.py").read_text(encoding="utf-8")
    assert 'config.include("repoze_who_memcached.pyramid")' in app_code
    setup_py = (hostile_project / "setup.py").read_text(encoding="utf-8")
    assert "repoze_who_memcached[paster,pyramid] @ file://" in setup_py
    readme = (hostile_project / "README.rst").read_text(encoding="utf-8")
    assert "repoze_who_memcached_pyramid" in readme and "make serve" in readme


def test_ini_files_hold_the_filter_options_as_who_settings(hostile_project, monkeypatch):
    from paste.deploy.loadwsgi import APP, loadcontext

    monkeypatch.syspath_prepend(str(hostile_project))  # egg:Pyr-Demo, from its egg-info

    for ini in ("development.ini", "development-who.ini", "production.ini"):
        text = (hostile_project / ini).read_text(encoding="utf-8")
        assert "[filter:auth]" not in text and "[pipeline:main]" not in text, ini
    dev = loadcontext(APP, f"config:{hostile_project / 'development.ini'}").local_conf
    assert dev["who.authenticator.bind_password"] == HOSTILE_PASSWORD
    assert dev["who.mdprovider.base_dn"] == HOSTILE_BASE_DN
    assert dev["who.authenticator"] == "egg:repoze_who_memcached#ldap_authenticator"
    assert "use" not in {k[4:] for k in dev if k.startswith("who.")}
    who = loadcontext(APP, f"config:{hostile_project / 'development-who.ini'}").local_conf
    assert who["who.config_file"] == str(hostile_project / "who.ini")
    prod = loadcontext(APP, f"config:{hostile_project / 'production.ini'}").local_conf
    assert prod["who.secret_file"] == str(hostile_project / "secrets" / "cache-secret")


def test_pyramid_ini_moves_options_keeps_comments_and_get_lines():
    ldap_ini = ("# x: development settings\n\n[DEFAULT]\nport = 1\n\n[pipeline:main]\n"
                "pipeline = auth app\n\n[app:app]\nuse = egg:x#main\n\n[filter:auth]\n"
                "use = egg:repoze_who_memcached\n# a comment\nget memcached_urls = mc\n"
                "realm = r\nattributes = cn\n    mail\n\n[server:main]\nport = 2\n")
    out = pyramid_ini(ldap_ini, "x", "x", "settings")
    assert out.split("[DEFAULT]", 1)[1] == (
        "\nport = 1\n\n[app:main]\nuse = egg:x#main\n\n# a comment\n"
        "get who.memcached_urls = mc\nwho.realm = r\nwho.attributes = cn\n    mail\n\n"
        "[server:main]\nport = 2\n")


def test_the_app_answers_against_real_ldap_and_memcached(hostile_project, slapd, memcached,
                                                         monkeypatch):
    """development.ini's app, with the servers of this test session (paster's variables)."""
    monkeypatch.syspath_prepend(str(hostile_project))  # the project's package and egg-info
    ini = hostile_project / "development.ini"
    text = ini.read_text(encoding="utf-8")
    # The dev directory has the hostile base DN; the session slapd has the sample one.
    ini.write_text(text.replace(HOSTILE_BASE_DN.replace("%", "%%"), slapd.users_base_dn)
                   .replace(HOSTILE_VARS["ldap_bind_dn"], slapd.reader_dn)
                   .replace(HOSTILE_PASSWORD.replace("%", "%%"), slapd.reader_password)
                   .replace("ou=groups,dc=example,dc=org", slapd.groups_base_dn),
                   encoding="utf-8")
    try:
        app = TestApp(loadapp(f"config:{ini}", global_conf={
            "ldap_url": slapd.url, "memcached_urls": memcached.url}))
    finally:
        ini.write_text(text, encoding="utf-8")
    response = app.get("/", status=401)
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Pyr-Demo (development)"'
    first = app.get("/?format=json", headers=basic("alice", "wonderland")).json
    assert first["userid"] == "alice" and first["groups"] == ["admins", "staff"]
    assert first["name"] == "Alice Liddell"
    assert first["cache"] == {"cache": {"authenticate": "miss", "add_metadata": "miss"}}
    second = app.get("/admin?format=json", headers=basic("alice", "wonderland")).json
    assert second["cache"] == {"cache": {"authenticate": "hit", "add_metadata": "hit"}}
    app.get("/admin", headers=basic("bob", "builder"), status=403)
    app.get("/", headers=basic("alice", "wrong"), status=401)
    assert "Hello, alice" in app.get("/", headers=basic("alice", "wonderland")).text


# ================================================================== from a wheel: make serve


@pytest.fixture
def pyramid_dev_stack(fresh_venv, tmp_path) -> Iterator[tuple[Path, int]]:  # noqa: F811
    """A Pyramid project created from the wheel, served by its own ``make serve``, offline
    (as test_scaffold's dev_stack: the venv is made beforehand only to hand it the other
    dependencies)."""
    ports = {"ldap": free_port(), "memcached": free_port(), "http": free_port()}
    pyramid_create(fresh_venv.paster, tmp_path, "pyrproj", *var_args({
        "ldap_url": f"ldap://127.0.0.1:{ports['ldap']}",
        "memcached_urls": f"127.0.0.1:{ports['memcached']}",
    }), env=fresh_venv.env)
    project = tmp_path / "pyrproj"
    project_venv = project / ".venv"
    venv_with_project_deps(project_venv, fresh_venv.deps)
    log = tmp_path / "make-serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(["make", "serve", f"HTTP_PORT={ports['http']}"], cwd=project,
                                   env=offline_environment(project_venv), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_http(ports["http"], process, log, timeout=180)
        yield project, ports["http"]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        for pid in (_pids_with_args("-p", str(ports["memcached"]))
                    + _pids_with_args("-f", str(project / "dev" / "slapd.conf"))
                    + _pids_with_args("serve", str(project / "development.ini"))):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_generated_pyramid_project_serves_on_the_first_make_serve(pyramid_dev_stack):
    project, http = pyramid_dev_stack
    status, headers, _ = _http_get(http)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Basic realm="pyrproj (development)"'
    status, _, body = _http_get(http, "alice", SAMPLE["alice"])
    assert status == 200, body
    first = json.loads(body)
    assert first["userid"] == "alice" and first["groups"] == ["admins", "staff"]
    assert first["cache"] == {"cache": {"authenticate": "miss", "add_metadata": "miss"}}
    status, _, body = _http_get(http, "alice", SAMPLE["alice"], path="/admin?format=json")
    assert status == 200
    assert json.loads(body)["cache"] == {"cache": {"authenticate": "hit", "add_metadata": "hit"}}
    assert _http_get(http, "bob", SAMPLE["bob"], path="/admin")[0] == 403
    assert _http_get(http, "alice", "not-her-password")[0] == 401
    installed = subprocess.run(
        [str(project / ".venv" / "bin" / "python"), "-c",
         "import pyramid, repoze_who_memcached.pyramid as p; print(p.__file__)"],
        cwd=project.parent, capture_output=True, text=True, check=True, timeout=60).stdout
    assert installed.startswith(str(project / ".venv")), installed  # from the wheel

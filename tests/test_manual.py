"""The manual cannot drift from the code.

* Every option a factory asks for (recorded by ``options.recording_options``) is documented
  in its table in ``docs/``, and every documented option is asked for; literal defaults match.
* The manual's examples run: PasteDeploy files and who.ini files are loaded and serve a login
  (401, 200, 401) against real slapd and memcached; Python examples are executed and log in.
"""

from __future__ import annotations

import base64
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET
from ldap_fixtures import ldap_options
from webtest import TestApp

from repoze_who_memcached import make_plugin
from repoze_who_memcached.ldap import make_authenticator, make_metadata_provider
from repoze_who_memcached.options import recording_options
from repoze_who_memcached.pipeline import build_middleware_factory, load_who_config
from repoze_who_memcached.scaffold import TEMPLATE_VARS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ENTRY = re.compile(
    r"^``(?P<name>[\w.*]+)``(?: (?:or|/) ``(?P<other>[\w.*]+)``)?"
    r"(?: — (?:default )?(?P<default>.*)| \(default: (?P<vardefault>.*)\))?$"
)


def documented(page: str, start: str | None = None, end: str | None = None) -> dict[str, str]:
    """``{option: default text}`` of the definition entries of a page, between two lines."""
    text = (DOCS / page).read_text(encoding="utf-8")
    if start:
        text = text[text.index(start):]
    if end:
        text = text[:text.index(end)]
    found = {}
    for line in text.splitlines():
        match = ENTRY.match(line)
        if match:
            default = match["default"] or match["vardefault"] or ""
            for name in filter(None, (match["name"], match["other"])):
                found[name.replace("OPTION", "*")] = default
    return found


def literal(default_text: str) -> str | None:
    match = re.match(r"``([^`]*)``", default_text.strip())
    return match[1] if match else None


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else None
    return str(value)


def check(code: dict[str, Any], docs: dict[str, str], what: str) -> None:
    missing = sorted(set(code) - set(docs))
    extra = sorted(set(docs) - set(code))
    assert not missing, f"{what}: accepted by the code, not in the manual: {missing}"
    assert not extra, f"{what}: in the manual, not accepted by the code: {extra}"
    for name, default in code.items():
        doc_default = literal(docs[name])
        if doc_default in docs:  # "default ``socket_timeout``": another option's value
            continue
        if doc_default is not None and as_text(default) is not None:
            assert doc_default == as_text(default), f"{what}: {name}: {doc_default!r} in the " \
                f"manual, {as_text(default)!r} in the code"


def test_cache_options_are_documented():
    with recording_options() as code:
        make_plugin(secret=SECRET, authenticator="backends_for_tests:CountingAuthenticator")
    check(code, documented("options.rst"), "cache options")


def test_filter_options_are_documented():
    with recording_options() as code:
        build_middleware_factory({}, {
            "secret": SECRET, "authenticator": "backends_for_tests:make_authenticator",
            "identifiers": "tkt basicauth", "authenticators": "tkt",
            "plugin.tkt": "repoze.who.plugins.auth_tkt:make_plugin",
            "plugin.tkt.secret": "a-ticket-secret-of-the-app",
        })
    cache_options = documented("options.rst")
    filter_only = {re.sub(r"^plugin\.\*\..+", "plugin.*.*",
                          re.sub(r"^plugin\.[^.*]+", "plugin.*", k)): v
                   for k, v in code.items() if k not in cache_options}
    docs = documented("configuration.rst", "Filter options", "The basic-auth identifier")
    docs = {k.replace("NAME", "*"): v for k, v in docs.items()}
    check(filter_only, docs, "filter options")


def test_ldap_options_are_documented(slapd):
    both = documented("ldap.rst", "Options of both", "Authenticator only")
    with recording_options() as auth:
        make_authenticator(**ldap_options(slapd))
    check(auth, {**both, **documented("ldap.rst", "Authenticator only",
                                       "Metadata provider only")}, "LDAP authenticator")
    with recording_options() as md:
        make_metadata_provider(**ldap_options(slapd), attributes="mail")
    check(md, {**both, **documented("ldap.rst", "Metadata provider only")},
          "LDAP metadata provider")


def test_template_variables_are_documented():
    docs = documented("template.rst")
    code = {v.name: v.default for v in TEMPLATE_VARS}
    assert sorted(code) == sorted(docs)


# -- the examples run ----------------------------------------------------------------------

def literal_blocks(path: Path) -> list[str]:
    """The ``::`` literal blocks of an RST file, dedented."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, k = [], 0
    while k < len(lines):
        if lines[k].rstrip().endswith("::") and not lines[k].lstrip().startswith(".."):
            k += 1
            body = []
            while k < len(lines) and (not lines[k].strip() or lines[k].startswith("  ")):
                body.append(lines[k])
                k += 1
            blocks.append(textwrap.dedent("\n".join(body)).strip("\n"))
        else:
            k += 1
    return blocks


MANUAL = [ROOT / "README.rst", *sorted(DOCS.glob("*.rst"))]
INI_BLOCKS = [(p.name, b) for p in MANUAL for b in literal_blocks(p)
              if re.search(r"^\[(filter|plugin|app|pipeline):", b, re.M)
              and "egg:myapp" not in b]  # an app's settings: the Python example's (below)
APP_SETTINGS = {p.name: b for p in MANUAL for b in literal_blocks(p) if "egg:myapp" in b}
PYTHON_BLOCKS = [(p.name, b) for p in MANUAL for b in literal_blocks(p)
                 if re.match(r"(from|import) ", b)]


def test_the_manual_has_examples_to_run():
    assert len(INI_BLOCKS) >= 4 and len(PYTHON_BLOCKS) >= 2


@pytest.fixture
def substitutions(tmp_path, slapd, memcached):
    """The manual's placeholder servers, files and passwords, made real."""
    cookie_secret = tmp_path / "cookie-secret"
    cookie_secret.write_text("a-cookie-secret-of-the-app-" + "x" * 20)
    secret_file = tmp_path / "cache-secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    password_file = tmp_path / "ldap-password"
    password_file.write_text(slapd.reader_password)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret").write_text(SECRET)
    return {
        "ldap://127.0.0.1:3890": slapd.url,
        "127.0.0.1:22122": memcached.url,
        "/etc/myapp/cache-secret": str(secret_file),
        "/etc/myapp/ldap-password": str(password_file),
        "/etc/myapp/cookie-secret": str(cookie_secret),
        "reader-secret": slapd.reader_password,
        "%(ldap_url)s": slapd.url,
        "%(memcached_urls)s": memcached.url,
    }


def made_real(text: str, substitutions: dict[str, str]) -> str:
    for placeholder, real in substitutions.items():
        text = text.replace(placeholder, real)
    return text


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def logs_in(app: TestApp) -> None:
    app.get("/", status=401)
    assert app.get("/", headers=basic("alice", "wonderland")).status_int == 200
    app.get("/", headers=basic("alice", "wrong"), status=401)


@pytest.mark.parametrize(("page", "block"), INI_BLOCKS,
                         ids=[f"{p}-{n}" for n, (p, _) in enumerate(INI_BLOCKS)])
def test_ini_examples_load_and_serve(page, block, tmp_path, substitutions):
    from paste.deploy import loadapp

    files = {"app.ini": block}
    if "# who.ini" in block:  # a pair in one block: "# app.ini" then "# who.ini"
        app_part, who_part = block.split("# who.ini", 1)
        files = {"app.ini": app_part.replace("# app.ini", ""), "who.ini": who_part}
    for name, text in files.items():
        (tmp_path / name).write_text(made_real(text, substitutions))
    app_ini = tmp_path / "app.ini"
    text = app_ini.read_text()
    if re.search(r"^\[(app|pipeline):", text, re.M):
        if "[server:" in text:
            text = text[:text.index("[server:")]
            app_ini.write_text(text)
        logs_in(TestApp(loadapp(f"config:{app_ini}")))
    elif "[identifiers]" in text:
        config = load_who_config(str(app_ini))
        assert config.authenticators
    else:  # a fragment: one section of a who.ini; our plugins in it must build
        import configparser

        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(text)
        for section in parser.sections():
            options = dict(parser[section])
            if options.pop("use", "") == "repoze_who_memcached:make_plugin":
                make_plugin(**options)


@pytest.mark.parametrize(("page", "block"), PYTHON_BLOCKS,
                         ids=[f"{p}-{n}" for n, (p, _) in enumerate(PYTHON_BLOCKS)])
def test_python_examples_run(page, block, substitutions):
    namespace: dict[str, Any] = {}
    exec(compile(made_real(block, substitutions), f"<{page}>", "exec"), namespace)  # noqa: S102
    factory = namespace.get("api_factory")
    if "main" in namespace and page in APP_SETTINGS:  # a Pyramid app and its ini settings
        import configparser

        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(made_real(APP_SETTINGS[page], substitutions))
        settings = {k: v for k, v in parser["app:main"].items() if k != "use"}
        logs_in(TestApp(namespace["main"]({}, **settings)))
    if "app" in namespace and callable(namespace["app"]):  # a TurboGears app
        assert TestApp(namespace["app"]).get("/").text == "hello"
    if factory is not None:
        def app(environ, start_response):
            identity = factory(environ).authenticate()
            status = "200 OK" if identity else "401 Unauthorized"
            start_response(status, [("Content-Type", "text/plain")])
            return [b""]

        logs_in(TestApp(app))

"""``paster create -t repoze_who_memcached_ldap``: the template, and the project it makes.

Three layers:

* in-process: the escaping and validation in ``scaffold.py`` (ini values that ConfigParser
  reads back exactly; values no ini file can carry refused with the variable's name), and a
  scan of the template files that every placeholder goes through its language's filter;
* ``paster create`` from the project venv (the editable checkout): listing, interactive and
  ``--no-interactive`` creation, hostile values read back by PasteDeploy and loaded by our
  real filter factories, refusals, no stray files;
* slow: a wheel built from a copy of the source tree, installed into a fresh venv, creates a
  project there; that project is installed and started with its own one-command dev stack
  (its slapd.conf and LDIF, memcached from repoze_who_memcached.testing) on free ports, and
  answered over real HTTP: 401, 200, cache hit with no LDAP bind, 401 for a wrong password.
"""

from __future__ import annotations

import base64
import configparser
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from paste.deploy import loadfilter
from paste.deploy.loadwsgi import FILTER, SERVER, ConfigLoader, NicerConfigParser, loadcontext

from repoze_who_memcached.testing import free_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # PasteScript: "pkg_resources is deprecated"
    from paste.util.template import paste_script_template_renderer

    from repoze_who_memcached.scaffold import (
        TEMPLATE_NAME,
        TemplateValueError,
        ini_value,
        ldif_line,
        prepare_vars,
        remove_copied_pycache,
        requirement_from_install,
        slapd_quote,
        template_root,
        variables_table,
    )

REPO = Path(__file__).resolve().parent.parent
PASTER = Path(sys.executable).parent / "paster"

# Values that break naive templating: %, quotes, comment characters, non-ASCII, braces.
HOSTILE_BASE_DN = 'ou=Ventes & \\"Marketing\\" 50% \u00dcber,dc=example,dc=org'
HOSTILE_BIND_DN = "cn=lecteur\\, sp\u00e9cial,ou=system,dc=example,dc=org"
HOSTILE_PASSWORD = 'p% a"ss ;#w\u00f6rd %(here)s {{x}}'
HOSTILE_VARS = {
    "ldap_base_dn": HOSTILE_BASE_DN,
    "ldap_bind_dn": HOSTILE_BIND_DN,
    "ldap_bind_password": HOSTILE_PASSWORD,
}
SAMPLE = {"alice": "wonderland", "bob": "builder", "zo\u00eb": "p\u00e4ssw\u00f6rd"}

# What a generated project holds, besides the NAME.egg-info/ that paster's own
# `setup.py egg_info` step writes after the template (PasteScript needs it for plugins).
EXPECTED_FILES = {
    ".gitignore", "Makefile", "README.rst", "setup.py", "devstack.py",
    "development.ini", "development-who.ini", "who.ini", "production.ini",
    "dev/users.ldif", "dev/slapd.conf", "{package}/__init__.py", "nutcracker.yml",
}


def project_files(project: Path) -> set[str]:
    """Every file and folder of a generated project, except paster's egg-info."""
    found = set()
    for path in project.rglob("*"):
        rel = path.relative_to(project)
        if rel.parts[0].endswith(".egg-info"):
            continue
        if path.is_file() or path.name == "__pycache__":
            found.add(str(rel))
    return found


def expected_files(package: str) -> set[str]:
    return {name.format(package=package) for name in EXPECTED_FILES}


def paster_create(paster: Path, where: Path, name: str, *args: str, env: dict | None = None,
                  input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    batch = ["--no-interactive"] if input is None else []
    result = subprocess.run(
        [str(paster), "create", "-t", TEMPLATE_NAME, *batch, name, *args],
        cwd=where, env=env, input=input, capture_output=True, text=True, timeout=120,
        start_new_session=True,  # no terminal: getpass reads the password from stdin
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def filter_options(ini: Path, variables: dict[str, str] | None = None) -> dict[str, str]:
    """The options PasteDeploy passes to the auth filter (``get`` lines resolved)."""
    return loadcontext(FILTER, f"config:{ini}", name="auth", global_conf=variables).local_conf


def server_options(ini: Path, variables: dict[str, str] | None = None) -> dict[str, str]:
    return loadcontext(SERVER, f"config:{ini}", global_conf=variables).local_conf


def var_args(values: dict[str, object]) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


# ================================================================== in-process


@pytest.mark.parametrize("value", [
    "50%", "%(here)s", "%%", 'a "quoted" value', "it's", ";not a comment", "#nor this",
    "Zo\u00eb \u00fcn\u00efc\u00f8d\u00e9 \u2713", "back\\slash\\", "[section]", "k = v",
    "{{braces}}", "$HOME", "a  b",
])
def test_ini_values_read_back_exactly(value):
    """Both ini readers (PasteDeploy's, repoze.who's) give back exactly what was written."""
    text = f"[s]\nkey = {ini_value(value)}\n"
    for parser in (NicerConfigParser("x.ini", defaults={"here": "/h"}),
                   configparser.ConfigParser(defaults={"here": "/h"})):
        parser.read_string(text)
        assert parser.get("s", "key") == value


@pytest.mark.parametrize("value", ["two\nlines", "cr\rhere", " leading", "trailing ", "tab\t"])
def test_ini_values_that_cannot_be_kept_are_refused(value):
    with pytest.raises(TemplateValueError):
        ini_value(value)


def test_ldif_lines_base64_whatever_is_not_plain_ascii():
    assert ldif_line("cn", "Alice") == "cn: Alice"
    for value in ("Zo\u00eb", " lead", "trail ", ":colon", "<angle"):
        line = ldif_line("cn", value)
        assert line.startswith("cn:: ")
        assert base64.b64decode(line[5:]).decode("utf-8") == value


def test_slapd_quote_escapes_backslashes_and_quotes():
    assert slapd_quote('cn=a\\, "b"') == '"cn=a\\\\, \\"b\\""'


def base_vars(**overrides: str) -> dict[str, str]:
    values = {"project": "demo", "package": "demo"}
    values.update(overrides)
    return values


def test_each_project_gets_a_fresh_random_secret():
    first, second = prepare_vars(base_vars()), prepare_vars(base_vars())
    assert first["secret"] != second["secret"]
    assert len(first["secret"]) >= 40
    assert first["ldap_bind_password_generated"]
    assert first["ldap_bind_password"] != second["ldap_bind_password"]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("ldap_bind_password", " spaced", "leading or trailing spaces"),
    ("ldap_bind_password", "two\nlines", "line break"),
    ("ldap_bind_password", "bad\udcff", "not valid UTF-8"),
    ("ldap_base_dn", "ou=a,b", "is not a DN"),
    ("ldap_base_dn", 'ou="quoted",dc=x', "is not a DN"),
    ("ldap_base_dn", "cn=a+uid=b,dc=x", "multi-valued"),
    ("ldap_base_dn", "ou=people,dc=exampl\u00eb,dc=org", "ASCII"),
    ("ldap_bind_dn", "dc=example,dc=org", "whole naming context"),
    ("ldap_bind_dn", "ou=people,dc=example,dc=org", "also the users'"),
    ("ldap_bind_dn", "mail=x,ou=system,dc=example,dc=org", "cn=... or uid=..."),
    ("ldap_bind_dn", "cn=svc,o=services", "share one naming context"),
    ("ldap_url", "http://example.org", "ldap://host"),
    ("ldap_url", "ldap://host/o=x?uid", "ldap://host"),
    ("memcached_urls", "host:99999", "host:port"),
    ("http_port", "0", "not a port number"),
    ("http_port", "eighty", "not a port number"),
    ("project", "1abc", "project name"),
    ("project", "../x", "project name"),
])
def test_bad_values_are_refused_naming_the_variable(name, value, message):
    overrides = {name: value}
    if name == "project":
        overrides["package"] = re.sub("[^a-z0-9_]", "", value.lower())
    with pytest.raises(TemplateValueError, match=re.escape(message)) as info:
        prepare_vars(base_vars(**overrides))
    assert name in str(info.value)


def render(out: Path, **values: str) -> dict:
    """What ``paster create`` does, in-process: check the variables, copy the template."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "pkg_resources is deprecated"
        from paste.script import copydir
    variables: dict = base_vars(**values)
    variables.update(prepare_vars(variables))
    copydir.copy_dir(str(template_root()), str(out), variables, verbosity=0, simulate=False,
                     svn_add=False, template_renderer=paste_script_template_renderer)
    return variables


@pytest.mark.parametrize("dns", [
    {},
    {"ldap_base_dn": "cn=Users,dc=corp,dc=com", "ldap_bind_dn": "uid=svc,ou=system,dc=corp,dc=com"},
    {"ldap_base_dn": "ou=people,o=Acme,c=US", "ldap_bind_dn": "cn=svc,o=Acme,c=US"},
    {"ldap_bind_dn": "cn=svc,dc=org", "ldap_group_base_dn": "ou=teams,ou=org,dc=example,dc=org"},
    HOSTILE_VARS,
], ids=["default", "ad-like", "country", "nested-suffix", "hostile"])
def test_dev_directory_is_accepted_by_slapadd(tmp_path, dns):
    """dev/slapd.conf and dev/users.ldif, as rendered, load into a real slapd database
    (slapadd checks the config, the schema and that every entry's parent exists)."""
    variables = render(tmp_path / "project", **dns)
    state = tmp_path / "project" / "var" / "slapd"
    (state / "db").mkdir(parents=True)
    loaded = subprocess.run(["/usr/sbin/slapadd", "-f", "../../dev/slapd.conf",
                             "-l", "../../dev/users.ldif"], cwd=state, capture_output=True,
                            text=True, timeout=60, check=False)
    assert loaded.returncode == 0, loaded.stderr
    dump = subprocess.run(["/usr/sbin/slapcat", "-f", "../../dev/slapd.conf", "-o", "ldif-wrap=no"],
                          cwd=state, capture_output=True, text=True, timeout=60, check=True).stdout
    entries = dump.count("\ndn") + dump.startswith("dn")
    assert entries == 3 + 2 + 1 + variables["dev_tree_ldif"].count("dn:")  # users, groups, svc


def test_template_placeholders_go_through_their_languages_filter():
    """A raw ``{{value}}`` in an ini, slapd.conf or Python template is a quoting bug waiting
    for the first password with a ``%`` in it: only validated names may appear raw."""
    raw_ok = {"project", "package", "rwm_version"}
    rules = {".ini_tmpl": "|ini", "slapd.conf_tmpl": "|slapd", ".py_tmpl": "|py"}
    root = template_root()
    checked = 0
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        rule = next((f for suffix, f in rules.items() if path.name.endswith(suffix)), None)
        for expr in re.findall(r"\{\{(.*?)\}\}", path.read_text(encoding="utf-8"), re.DOTALL):
            expr = expr.strip()
            if re.match(r"(if|elif|for)\b|(else|endif|endfor)$|#", expr):
                continue
            if path.name == "users.ldif_tmpl":
                ok = expr.startswith("ldif_entry(") or expr.startswith("dev_") or expr in raw_ok
            elif rule is not None:
                ok = expr.replace(" ", "").endswith(rule) or expr in raw_ok
            else:
                ok = True  # README, Makefile: prose and make syntax
            assert ok, f"{path.relative_to(root)}: {{{{{expr}}}}} is not escaped"
            checked += 1
    assert checked > 40


def test_template_folder_holds_no_python_files():
    """pip byte-compiles .py files in a wheel, and paster would copy the __pycache__."""
    root = template_root()
    assert not [p for p in root.rglob("*") if p.suffix in (".py", ".pyc")]
    assert not [p for p in root.rglob("__pycache__")]


def test_copied_pycache_folders_are_removed(tmp_path):
    """PasteScript copies a template's __pycache__ (skipping the .pyc files in it): the
    empty folder it leaves is removed; a __pycache__ Python filled is left alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "pkg_resources is deprecated"
        from paste.script import copydir
    template = tmp_path / "template"
    (template / "pkg" / "__pycache__").mkdir(parents=True)
    (template / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (template / "pkg" / "mod.txt").write_text("x")
    out = tmp_path / "out"
    copydir.copy_dir(str(template), str(out), {}, verbosity=0, simulate=False, svn_add=False)
    assert (out / "pkg" / "__pycache__").is_dir()  # PasteScript's behaviour, still there
    (out / "other" / "__pycache__").mkdir(parents=True)
    (out / "other" / "__pycache__" / "real.pyc").write_bytes(b"\0")
    removed = remove_copied_pycache(template, out)
    assert removed == [out / "pkg" / "__pycache__"]
    assert (out / "other" / "__pycache__" / "real.pyc").exists()


# ================================================================== paster, editable checkout


@pytest.fixture(scope="module")
def hostile_project(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("hostile")
    paster_create(PASTER, where, "Hostile-Demo", *var_args({
        **HOSTILE_VARS,
        "ldap_url": "ldap://127.0.0.1:1389 ldaps://ldap2.example.org",
        "memcached_urls": "127.0.0.1:11311, 127.0.0.1:11312",
        "http_port": "8089",
    }))
    return where / "Hostile-Demo"


def test_list_templates_shows_ours_with_a_summary():
    out = subprocess.run([str(PASTER), "create", "--list-templates"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    line = next(line for line in out.splitlines() if TEMPLATE_NAME in line)
    assert "LDAP" in line and "memcached" in line


def test_hostile_values_come_out_exactly_in_every_ini(hostile_project):
    dev = filter_options(hostile_project / "development.ini")  # what our filter gets
    assert dev["authenticator.bind_password"] == HOSTILE_PASSWORD
    assert dev["mdprovider.bind_password"] == HOSTILE_PASSWORD
    assert dev["authenticator.base_dn"] == HOSTILE_BASE_DN
    assert dev["authenticator.bind_dn"] == HOSTILE_BIND_DN
    assert dev["memcached_urls"] == "127.0.0.1:11311 127.0.0.1:11312"
    assert dev["authenticator.url"] == dev["mdprovider.url"] == (
        "ldap://127.0.0.1:1389 ldaps://ldap2.example.org:636")
    assert server_options(hostile_project / "development.ini")["port"] == "8089"
    # `make serve HTTP_PORT=... LDAP_URL=... MEMCACHED_URLS=...` reach the app as paster's
    # name=value variables.
    chosen = {"ldap_url": "ldap://127.0.0.1:4000", "memcached_urls": "127.0.0.1:4001",
              "http_port": "4002"}
    overridden = filter_options(hostile_project / "development.ini", chosen)
    assert overridden["authenticator.url"] == overridden["mdprovider.url"] == chosen["ldap_url"]
    assert overridden["memcached_urls"] == chosen["memcached_urls"]
    assert server_options(hostile_project / "development.ini", chosen)["port"] == "4002"
    who = configparser.ConfigParser(defaults={"here": str(hostile_project)})
    who.read(hostile_project / "who.ini", encoding="utf-8")
    assert who.get("plugin:ldap", "bind_password") == HOSTILE_PASSWORD
    assert who.get("plugin:ldap_metadata", "base_dn") == HOSTILE_BASE_DN
    assert who.get("plugin:cache", "secret") == dev["secret"]
    prod = ConfigLoader(str(hostile_project / "production.ini")).parser
    assert prod.get("filter:auth", "authenticator.bind_dn") == HOSTILE_BIND_DN
    assert prod.get("filter:auth", "secret_file") == str(hostile_project / "secrets/cache-secret")


def test_every_ini_loads_with_the_real_factories(hostile_project):
    """Our filter factory builds the LDAP plugins and the cache from each file (no server
    is contacted at load time), so every option name and value is accepted for real."""
    for ini in ("development.ini", "development-who.ini"):
        assert callable(loadfilter(f"config:{hostile_project / ini}", name="auth"))
    secrets_dir = hostile_project / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "cache-secret").write_text("rj-2iRTL7b8AuVO8manqx6Ff20u4MRr12Vb8Zx6ZCGI\n")
    (secrets_dir / "ldap-bind-password").write_text("service-password\n")
    try:
        assert callable(loadfilter(f"config:{hostile_project / 'production.ini'}", name="auth"))
    finally:
        shutil.rmtree(secrets_dir)


def test_production_ini_is_commented_and_reads_secrets_from_files(hostile_project):
    """Every setting of the filter and server sections sits in a paragraph that a comment
    opens (settings that go together, such as the metadata provider's, share one)."""
    text = (hostile_project / "production.ini").read_text(encoding="utf-8")
    section = ""
    paragraph_commented = False
    for line in text.splitlines():
        if not line.strip():
            paragraph_commented = False
        elif line.startswith("["):
            section, paragraph_commented = line, False
        elif line.startswith("#"):
            paragraph_commented = True
        elif section in ("[DEFAULT]", "[filter:auth]", "[server:main]"):
            assert paragraph_commented, f"{section} {line!r} has no comment"
    prod = ConfigLoader(str(hostile_project / "production.ini")).parser
    assert len(prod.get("filter:auth", "memcached_urls").split()) >= 2
    assert int(prod.get("filter:auth", "ttl")) > 60
    assert not prod.has_option("filter:auth", "secret")
    assert prod.get("filter:auth", "authenticator.bind_password_file").endswith(
        "ldap-bind-password")
    assert "DEBUG" not in text and "debug = true" not in text.lower()
    assert HOSTILE_PASSWORD.replace("%", "%%") not in text


def test_generated_files_are_exactly_the_expected_ones(hostile_project):
    assert project_files(hostile_project) == expected_files("hostiledemo")
    for path in hostile_project.rglob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
    readme = (hostile_project / "README.rst").read_text(encoding="utf-8")
    assert "make serve" in readme and "alice" in readme and "wonderland" in readme
    makefile = (hostile_project / "Makefile").read_text()
    assert re.search(r"^serve: .*\n\t\$\(BIN\)/python devstack\.py$", makefile, re.M)


def test_interactive_create_asks_for_each_variable(tmp_path):
    answers = ["ldap://127.0.0.1:1389", "ou=users,dc=corp,dc=test", "cn=svc,dc=corp,dc=test",
               "s3cr%t", "", "127.0.0.1:11311", "8089", "ldap://ldap.corp.test", "mc1 mc2", ""]
    result = paster_create(PASTER, tmp_path, "asked", input="\n".join(answers) + "\n")
    for name in ("ldap_url", "ldap_base_dn", "ldap_bind_dn", "ldap_bind_password",
                 "memcached_urls", "http_port"):
        assert f"Enter {name} (" in result.stdout + result.stderr
    dev = filter_options(tmp_path / "asked" / "development.ini")
    assert dev["authenticator.bind_password"] == "s3cr%t"
    assert dev["mdprovider.group_base_dn"] == "ou=groups,dc=corp,dc=test"
    prod = ConfigLoader(str(tmp_path / "asked" / "production.ini")).parser
    assert prod.get("filter:auth", "memcached_urls") == "mc1:11211 mc2:11211"
    assert prod.get("filter:auth", "authenticator.start_tls") == "true"  # ldap:// needs it


def test_a_refused_value_writes_nothing(tmp_path):
    result = paster_create(PASTER, tmp_path, "refused", "ldap_bind_password= x", check=False)
    assert result.returncode != 0
    assert "ldap_bind_password" in result.stdout and "spaces" in result.stdout
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize(("args", "named", "hint"), [
    (["ldap_ulr=ldap://x"], "'ldap_ulr'", "did you mean ldap_url?"),
    (["memcached_servers=127.0.0.1:1"], "'memcached_servers'", "memcached_urls now"),
    (["http_port=8080", "colour=blue"], "'colour'", "Nothing was written"),
])
def test_an_unknown_variable_is_refused_naming_it(tmp_path, args, named, hint):
    result = paster_create(PASTER, tmp_path, "typo", *args, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"unknown variable {named}" in output and hint in output
    assert "memcached_urls" in output  # the list of what it takes
    assert not (tmp_path / "typo").exists()


def _dist_with(tmp_path: Path, direct_url: dict | None):
    """A real installed-distribution record (a dist-info folder) with this direct_url.json."""
    import importlib.metadata

    info = tmp_path / "repoze_who_memcached-9.8.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: repoze_who_memcached\n"
                                   "Version: 9.8\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    return importlib.metadata.PathDistribution(info)


def test_requirement_names_where_the_install_came_from(tmp_path):
    wheel = tmp_path / "repoze_who_memcached-9.8-py3-none-any.whl"
    wheel.write_bytes(b"")
    checkout = tmp_path / "check out"
    checkout.mkdir()
    cases = [
        (None, "repoze_who_memcached[paster]>=9.8"),  # from an index
        ({"url": wheel.as_uri(), "archive_info": {}}, f"repoze_who_memcached[paster] @ "
         f"{wheel.as_uri()}"),
        ({"url": checkout.as_uri(), "dir_info": {"editable": True}},
         "repoze_who_memcached[paster] @ " + checkout.as_uri()),
        ({"url": "https://git.example.org/rwm.git",
          "vcs_info": {"vcs": "git", "commit_id": "abc123"}},
         "repoze_who_memcached[paster] @ git+https://git.example.org/rwm.git@abc123"),
    ]
    for n, (direct_url, expected) in enumerate(cases):
        where = tmp_path / str(n)
        where.mkdir()
        assert requirement_from_install(_dist_with(where, direct_url)) == expected
    assert "%20" in checkout.as_uri()  # a space stays a valid requirement
    gone = tmp_path / "gone"
    gone.mkdir()
    with pytest.raises(TemplateValueError, match="repoze_who_memcached_requirement"):
        requirement_from_install(_dist_with(gone, {"url": (tmp_path / "x.whl").as_uri(),
                                                    "archive_info": {}}))


def test_requirement_can_be_given_and_is_checked():
    given = prepare_vars(base_vars(repoze_who_memcached_requirement="repoze-who-memcached>=1"))
    assert given["rwm_requirement"] == "repoze-who-memcached>=1"
    with pytest.raises(TemplateValueError, match="repoze_who_memcached_requirement"):
        prepare_vars(base_vars(repoze_who_memcached_requirement="requests"))
    # From this checkout (an editable install), the source tree by its file:// URL.
    assert prepare_vars(base_vars())["rwm_requirement"] == (
        f"repoze_who_memcached[paster] @ {REPO.as_uri()}")


def test_both_readmes_list_every_variable_with_its_default(hostile_project):
    table = variables_table()
    assert table in (REPO / "docs" / "template.rst").read_text(encoding="utf-8")
    assert table in (hostile_project / "README.rst").read_text(encoding="utf-8")
    for name in ("ldap_url", "memcached_urls", "http_port", "production_memcached_urls",
                 "repoze_who_memcached_requirement"):
        assert re.search(rf"^``{name}`` \(default: \S", table, re.M), name


def test_generated_devstack_refuses_a_taken_port(hostile_project, tmp_path):
    """development.ini's memcached port (or slapd's, or HTTP's) is taken: devstack.py stops
    before serving, names the port and the make variable, and leaves nothing running."""
    import socket

    for env_name, value in (("MEMCACHED_URLS", "127.0.0.1:{port}"),
                            ("LDAP_URL", "ldap://127.0.0.1:{port}"), ("HTTP_PORT", "{port}")):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", free_port()))
            listener.listen()
            port = listener.getsockname()[1]
            env = {**os.environ, env_name: value.format(port=port)}
            result = subprocess.run([sys.executable, "devstack.py", "--var", str(tmp_path)],
                                    cwd=hostile_project, env=env, capture_output=True,
                                    text=True, timeout=60, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"port {port} is already in use" in result.stderr
        assert f"make serve {env_name}=" in result.stderr
        assert "Nothing is left running" in result.stderr
        assert not _pids_with_args("-f", str(hostile_project / "dev" / "slapd.conf"))
        assert not _pids_with_args("-p", "11311") and not _pids_with_args("-p", "11312")


def test_generated_devstack_refuses_an_override_the_ini_ignores(hostile_project):
    env = {**os.environ, "MEMCACHED_URLS": "127.0.0.1:9"}
    result = subprocess.run([sys.executable, "devstack.py", "--ini", "development-who.ini"],
                            cwd=hostile_project, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1
    assert "MEMCACHED_URLS" in result.stderr and "who.ini" in result.stderr


# ================================================================== from a wheel, in a fresh venv


@dataclass
class FreshVenv:
    root: Path
    python: Path
    paster: Path
    env: dict[str, str]
    deps: Path  # the project venv's packages (not ours), for more venvs like this one
    wheel: Path  # our wheel, installed here by its path

    def pip_install(self, *args: str) -> None:
        # The project venv's pip installs into the fresh venv (pip >= 22.3: --python).
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(self.python), "install", "--quiet",
             "--no-deps", "--no-index", "--no-build-isolation", *args],
            check=True, capture_output=True, text=True, timeout=180,
        )


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the tree (a build writes build/ and egg-info where it runs).

    The copy must not be called ``src``: setuptools would take it for a src-layout root.
    """
    source = tmp / "tree"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("setup.py", "pyproject.toml", "README.rst", "LICENSE"):
        source.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    for name in ("repoze_who_memcached", "paster_templates"):
        shutil.copytree(REPO / name, source / name, ignore=skip)
    dist = tmp / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
         str(source)], capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = dist.glob("repoze_who_memcached-*.whl")
    return wheel


def venv_with_project_deps(root: Path, deps: Path) -> Path:
    """A new venv (no pip of its own) that sees ``deps`` through a .pth; returns its python.

    ``deps`` is a folder of symlinks to the project venv's packages, leaving out our own
    package and its editable hook (a .pth runs ``site.addsitedir`` on it, so namespace .pth
    files there work). Nothing is downloaded: this machine may be offline.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   timeout=120)
    python = root / "bin" / "python"
    purelib = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    hook = f"import site; site.addsitedir({str(deps)!r})\n"
    (purelib / "_project_venv_deps.pth").write_text(hook)
    # PasteScript's console script, as pip would have written it had it installed PasteScript.
    paster = root / "bin" / "paster"
    paster.write_text(
        f"#!{python}\nimport sys\nfrom paste.script.command import run\nsys.exit(run())\n")
    paster.chmod(0o755)
    return python


def offline_environment(root: Path) -> dict[str, str]:
    """This process's environment for a venv at ``root``, with pip offline: no index, no
    find-links, no config file (so nothing is fetched from anywhere)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(PATH=f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(root),
               PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> FreshVenv:
    """A new venv with only our wheel installed (by path, as a user would install a wheel
    they were given); its dependencies come from the project venv (venv_with_project_deps).
    """
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    deps = tmp / "deps"
    deps.mkdir()
    project_site = Path(sysconfig.get_paths()["purelib"])
    for entry in project_site.iterdir():
        if not entry.name.startswith(("repoze_who_memcached", "__editable__", "__pycache__")):
            (deps / entry.name).symlink_to(entry)
    root = tmp / "venv"
    python = venv_with_project_deps(root, deps)
    venv = FreshVenv(root, python, root / "bin" / "paster", offline_environment(root), deps,
                     wheel)
    venv.pip_install(str(wheel))
    return venv


@pytest.mark.slow
def test_wheel_install_lists_and_creates(fresh_venv, tmp_path):
    where = subprocess.run(
        [str(fresh_venv.python), "-c", "from repoze_who_memcached.scaffold import template_root;"
         " print(template_root())"], env=fresh_venv.env, cwd=tmp_path, capture_output=True,
        text=True, check=True).stdout.strip()
    assert where.startswith(str(fresh_venv.root)), where  # the wheel's copy, not the checkout
    # pip compiled paster_templates/__init__.py: a __pycache__ sits next to the template.
    assert (Path(where).parent / "__pycache__").is_dir()

    listing = subprocess.run([str(fresh_venv.paster), "create", "--list-templates"],
                             env=fresh_venv.env, cwd=tmp_path, capture_output=True, text=True,
                             check=True, timeout=60).stdout
    assert re.search(rf"^\s+{TEMPLATE_NAME}:\s+\S.*LDAP", listing, re.M), listing

    result = paster_create(fresh_venv.paster, tmp_path, "wheelproj", env=fresh_venv.env)
    assert "Traceback" not in result.stdout + result.stderr
    project = tmp_path / "wheelproj"
    assert project_files(project) == expected_files("wheelproj")
    assert (project / "wheelproj.egg-info" / "entry_points.txt").read_text().count(
        "wheelproj:make_app") == 1


def _http_get(port: int, login: str | None = None, password: str = "",
              path: str = "/?format=json") -> tuple[int, http.client.HTTPMessage, bytes]:
    headers = {}
    if login is not None:
        token = base64.b64encode(f"{login}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def _wait_for_http(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _http_get(port, path="/")
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the dev stack did not serve on {port}:\n"
                            f"{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.1)


def _successful_binds(slapd_log: Path, dn_prefix: str = "") -> int:
    """Binds slapd answered with success (its ``-d 256`` log), optionally for one DN.

    slapd logs just after it answers, so wait until the log has been quiet for a moment."""
    size = -1
    for _ in range(40):
        if slapd_log.stat().st_size == size:
            break
        size = slapd_log.stat().st_size
        time.sleep(0.05)
    bound: dict[str, str] = {}
    count = 0
    for line in slapd_log.read_text(errors="replace").splitlines():
        op = re.search(r"(conn=\d+ op=\d+) ", line)
        if op and ' BIND dn="' in line:
            bound[op.group(1)] = line.split(' BIND dn="', 1)[1].split('"', 1)[0]
        elif op and " RESULT tag=97 err=0 " in line:
            dn = bound.get(op.group(1), "")
            count += bool(dn) and dn.lower().startswith(dn_prefix.lower())
    return count


def _pids_with_args(*args: str) -> list[int]:
    """Processes whose command line contains all ``args`` as exact arguments (for cleanup
    of what this test started, found by the unique ports and paths it gave them)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if all(a in argv for a in args):
                pids.append(int(proc.name))
    return pids


@pytest.fixture
def dev_stack(fresh_venv, tmp_path) -> Iterator[tuple[Path, dict[str, int]]]:
    """A project created from the wheel (hostile DNs and password, free ports), then its own
    ``make serve``, offline: the Makefile installs the project into its own venv, and with
    it repoze_who_memcached from the wheel file setup.py names (the venv is made beforehand
    only to hand it the other dependencies, which this offline machine cannot download).
    The HTTP port is chosen with ``make serve HTTP_PORT=...``."""
    ports = {"ldap": free_port(), "memcached": free_port(), "http": free_port()}
    values = {
        **HOSTILE_VARS,
        "ldap_url": f"ldap://127.0.0.1:{ports['ldap']}",
        "memcached_urls": f"127.0.0.1:{ports['memcached']}",
        "http_port": free_port(),  # development.ini's; HTTP_PORT below overrides it
    }
    paster_create(fresh_venv.paster, tmp_path, "e2eproj", *var_args(values), env=fresh_venv.env)
    project = tmp_path / "e2eproj"
    setup_py = (project / "setup.py").read_text()
    assert f"repoze_who_memcached[paster] @ {fresh_venv.wheel.as_uri()}" in setup_py
    project_venv = project / ".venv"
    venv_with_project_deps(project_venv, fresh_venv.deps)
    log = tmp_path / "make-serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(["make", "serve", f"HTTP_PORT={ports['http']}"], cwd=project,
                                   env=offline_environment(project_venv), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_http(ports["http"], process, log, timeout=180)
        installed = subprocess.run(
            [str(project_venv / "bin" / "python"), "-c",
             "import repoze_who_memcached, sys; sys.stdout.write(repoze_who_memcached.__file__)"],
            cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60).stdout
        assert installed.startswith(str(project_venv)), installed  # from the wheel, here
        yield project, ports
        slapd_pid = int((project / "var" / "slapd" / "slapd.pid").read_text())  # gone at exit
        # Ctrl-C's path: devstack.py stops the app, then slapd and memcached, by their pids.
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        deadline = time.monotonic() + 30
        while "devstack: stopped slapd and memcached" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        assert not Path(f"/proc/{slapd_pid}").exists() or _is_zombie(slapd_pid)
        assert not _pids_with_args("-p", str(ports["memcached"]))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        for pid in (_pids_with_args("-p", str(ports["memcached"]))
                    + _pids_with_args("-f", str(project / "dev" / "slapd.conf"))
                    + _pids_with_args("serve", str(project / "development.ini"))):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_generated_project_serves_ldap_logins_cached_in_memcached(dev_stack, fresh_venv):
    project, ports = dev_stack
    http = ports["http"]
    slapd_log = project / "var" / "slapd" / "slapd.log"

    status, headers, _ = _http_get(http)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Basic realm="e2eproj (development)"'

    status, _, body = _http_get(http, "alice", SAMPLE["alice"])
    assert status == 200, body
    first = json.loads(body)
    assert first["userid"] == "alice"
    assert first["name"] == "Alice Liddell"
    assert first["groups"] == ["admins", "staff"]
    assert first["cache"] == {"cache": {"authenticate": "miss", "add_metadata": "miss"}}
    binds_after_first = _successful_binds(slapd_log)
    assert _successful_binds(slapd_log, "uid=alice,") == 1
    assert binds_after_first >= 2  # the service account (escaped, non-ASCII DN), then alice

    status, _, body = _http_get(http, "alice", SAMPLE["alice"])
    assert status == 200
    assert json.loads(body)["cache"] == {"cache": {"authenticate": "hit", "add_metadata": "hit"}}
    assert _successful_binds(slapd_log) == binds_after_first  # no LDAP bind at all

    status, _, _ = _http_get(http, "alice", "not-her-password")
    assert status == 401
    status, _, body = _http_get(http, "zo\u00eb", SAMPLE["zo\u00eb"])  # UTF-8, as curl sends
    assert status == 200 and json.loads(body)["userid"] == "zo\u00eb"

    # The who.ini route, against the same running slapd and memcached (bob is not cached).
    check = (
        "import base64, json, sys\n"
        "from paste.deploy import loadapp\n"
        "from webtest import TestApp\n"
        "app = TestApp(loadapp('config:' + sys.argv[1]))\n"
        "app.get('/', status=401)\n"
        "auth = {'Authorization': 'Basic ' + base64.b64encode(b'bob:builder').decode()}\n"
        "print(json.dumps([app.get('/?format=json', headers=auth).json for _ in range(2)]))\n"
    )
    project_python = project / ".venv" / "bin" / "python"  # where make serve installed it
    out = subprocess.run([str(project_python), "-c", check,
                          str(project / "development-who.ini")],
                         env=offline_environment(project / ".venv"),
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = json.loads(out.stdout.splitlines()[-1])
    assert first["userid"] == "bob" and first["groups"] == ["staff"]
    assert first["cache"]["cache"]["authenticate"] == "miss"
    assert second["cache"]["cache"] == {"authenticate": "hit", "add_metadata": "hit"}

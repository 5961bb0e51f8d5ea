"""The PasteDeploy filter and the who.ini route, driven with WebTest against real memcached."""

from __future__ import annotations

import base64
import textwrap

import pytest
from conftest import SECRET
from paste.deploy import loadapp
from webtest import TestApp

from repoze_who_memcached import ConfigError
from repoze_who_memcached.pipeline import AuthMiddleware, load_who_config


def basic(user: str, password: str, encoding: str = "utf-8") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode(encoding)).decode()
    return {"Authorization": f"Basic {token}"}


def write_ini(tmp_path, text: str, name: str = "app.ini") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


PIPELINE_INI = """
    [app:demo]
    use = egg:repoze_who_memcached#demo

    [filter:auth]
    use = egg:repoze_who_memcached
    realm = Test Realm
    authenticator = backends_for_tests:make_authenticator
    authenticator.users = alice:wonderland zoë:pässwörd
    mdprovider = backends_for_tests:make_metadata
    memcached_urls = {url}
    secret = {secret}
    {extra}

    [pipeline:main]
    pipeline = auth demo
"""


def pipeline_app(tmp_path, memcached, extra: str = "") -> TestApp:
    ini = write_ini(tmp_path, PIPELINE_INI.format(url=memcached.url, secret=SECRET, extra=extra))
    return TestApp(loadapp(f"config:{ini}"))


def test_pipeline_challenge_login_and_hit(tmp_path, memcached):
    app = pipeline_app(tmp_path, memcached)
    response = app.get("/", status=401)
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Test Realm"'
    assert app.get("/", headers=basic("alice", "nope"), status=401)
    first = app.get("/?format=json", headers=basic("alice", "wonderland")).json
    assert first["userid"] == "user:alice"
    assert first["cache"]["cache"] == {"authenticate": "miss", "add_metadata": "miss"}
    assert first["identity"]["groups"] == ["staff", "group-of-user:alice"]
    second = app.get("/?format=json", headers=basic("alice", "wonderland")).json
    assert second["cache"]["cache"] == {"authenticate": "hit", "add_metadata": "hit"}
    assert second["identity"] == first["identity"]
    assert second["counters"]["cache"]["hits"] == 2
    assert "password" not in second["identity"]


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_pipeline_unicode_credentials(tmp_path, memcached, encoding):
    app = pipeline_app(tmp_path, memcached)
    body = app.get("/?format=json", headers=basic("zoë", "pässwörd", encoding)).json
    assert body["userid"] == "user:zoë"


def test_pipeline_builds_registries_once(tmp_path, memcached):
    app = pipeline_app(tmp_path, memcached)
    middleware = app.app
    assert isinstance(middleware, AuthMiddleware)
    factory = middleware.api_factory
    app.get("/", headers=basic("alice", "wonderland"))
    registry = factory.interface_registry
    app.get("/", headers=basic("alice", "wonderland"))
    assert factory.interface_registry is registry


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("ttl = soon", "'ttl': expected a whole number"),
        ("tll = 5", "unknown option 'tll'"),
        ("identifiers = nosuch", "unknown plugin 'nosuch'"),
        ("plugin.extra = repoze.who.plugins.auth_tkt:make_plugin", "'plugin.extra': defined but"),
        ("request_classifier = no.such:thing", "'request_classifier': cannot find"),
    ],
)
def test_pipeline_bad_config_fails_at_load(tmp_path, memcached, extra, message):
    with pytest.raises(ConfigError, match=message):
        pipeline_app(tmp_path, memcached, extra)


def test_pipeline_without_secret_fails(tmp_path, memcached):
    ini = write_ini(tmp_path, PIPELINE_INI.format(url=memcached.url, secret="", extra=""))
    with pytest.raises(ConfigError, match="'secret': is required"):
        loadapp(f"config:{ini}")


def test_missing_config_file_fails_loudly(tmp_path):
    ini = write_ini(tmp_path, """
        [app:demo]
        use = egg:repoze_who_memcached#demo

        [filter:auth]
        use = egg:repoze_who_memcached
        config_file = %(here)s/missing-who.ini

        [pipeline:main]
        pipeline = auth demo
    """)
    with pytest.raises(ConfigError, match="missing-who.ini"):
        loadapp(f"config:{ini}")


WHO_2011 = """
    [plugin:basicauth]
    use = repoze.who.plugins.basicauth:make_plugin
    realm = legacy

    [plugin:ldap]
    use = backends_for_tests:make_authenticator
    users = alice:wonderland

    [plugin:cached_ldap]
    use = repoze_who_memcached:make_plugin
    memcached_urls = {url}
    authenticator_name = ldap
    key_items = login password
    secret = {secret}
    ttl = 60

    {general}

    [identifiers]
    plugins = basicauth

    [authenticators]
    plugins = cached_ldap ldap;unused

    [challengers]
    plugins = basicauth
"""

WHO_GENERAL = """
    [general]
    request_classifier = repoze.who.classifiers:default_request_classifier
    challenge_decider = repoze.who.classifiers:default_challenge_decider
"""


@pytest.mark.parametrize("general", [WHO_GENERAL, ""], ids=["classifier", "no-classifier"])
def test_2011_config_works_with_only_use_changed(tmp_path, memcached, general):
    write_ini(tmp_path, WHO_2011.format(url=memcached.url, secret=SECRET, general=general),
              "who.ini")
    ini = write_ini(tmp_path, """
        [app:demo]
        use = egg:repoze_who_memcached#demo

        [filter:auth]
        use = egg:repoze_who_memcached
        config_file = %(here)s/who.ini

        [pipeline:main]
        pipeline = auth demo
    """)
    app = TestApp(loadapp(f"config:{ini}"))
    assert app.get("/", status=401).headers["WWW-Authenticate"] == 'Basic realm="legacy"'
    assert app.get("/", headers=basic("alice", "bad"), status=401)
    first = app.get("/?format=json", headers=basic("alice", "wonderland")).json
    second = app.get("/?format=json", headers=basic("alice", "wonderland")).json
    assert first["userid"] == second["userid"] == "user:alice"
    assert second["cache"]["cached_ldap"]["authenticate"] == "hit"
    config = load_who_config(str(tmp_path / "who.ini"))
    wrapped = config.plugins["ldap"]
    assert wrapped.calls == 0
    assert [name for name, _ in config.authenticators] == ["cached_ldap"]


def test_2011_config_with_stock_repoze_who_loader(tmp_path, memcached):
    """The stock ``egg:repoze.who#config`` route: names resolve on the first request, and
    the cache takes its section's name from repoze.who's registry, as under our loader."""
    write_ini(tmp_path, WHO_2011.format(url=memcached.url, secret=SECRET, general=WHO_GENERAL),
              "who.ini")
    ini = write_ini(tmp_path, """
        [app:demo]
        use = egg:repoze_who_memcached#demo

        [filter:who]
        use = egg:repoze.who#config
        config_file = %(here)s/who.ini

        [pipeline:main]
        pipeline = who demo
    """)
    app = TestApp(loadapp(f"config:{ini}"))
    app.get("/", headers=basic("alice", "wonderland"))
    body = app.get("/?format=json", headers=basic("alice", "wonderland")).json
    assert body["cache"]["cached_ldap"]["authenticate"] == "hit"


def test_who_ini_with_unknown_wrapped_name_fails(tmp_path, memcached):
    text = WHO_2011.format(url=memcached.url, secret=SECRET, general="").replace(
        "authenticator_name = ldap", "authenticator_name = ldapp")
    path = write_ini(tmp_path, text, "who.ini")
    with pytest.raises(ConfigError, match="no plugin named 'ldapp'"):
        load_who_config(path)


def test_who_ini_with_bad_option_names_it(tmp_path, memcached):
    text = WHO_2011.format(url=memcached.url, secret=SECRET, general="").replace(
        "ttl = 60", "ttl = sixty")
    path = write_ini(tmp_path, text, "who.ini")
    with pytest.raises(ConfigError, match="'ttl'"):
        load_who_config(path)


def test_pipeline_with_auth_tkt_by_module_factory(tmp_path, memcached):
    """Other identifiers come in by ``plugin.NAME = module:factory`` with their options."""
    app = pipeline_app(tmp_path, memcached, "\n    ".join([
        "identifiers = tkt basicauth",
        "authenticators = tkt",
        "plugin.tkt = repoze.who.plugins.auth_tkt:make_plugin",
        "plugin.tkt.secret = another-long-secret-for-tickets",
        "plugin.tkt.cookie_name = session",
    ]))
    assert app.get("/?format=json", headers=basic("alice", "wonderland")).json["userid"] == (
        "user:alice"
    )
    # A ticket (as a login view would issue with api.remember) logs in on its own.
    tkt = app.app.api_factory.name_registry["tkt"]
    headers = tkt.remember({"HTTP_HOST": "localhost", "REMOTE_ADDR": "127.0.0.1"},
                           {"repoze.who.userid": "alice"})
    cookie = headers[0][1].split(";")[0]
    name, _, value = cookie.partition("=")
    assert name == "session"
    again = app.get("/?format=json", headers={"Cookie": cookie}).json
    assert again["userid"] == "alice"
    app.get("/", headers={"Cookie": f"{name}=forged{value[6:]}"}, status=401)

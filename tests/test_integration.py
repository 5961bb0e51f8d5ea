"""Every way a user drives repoze.who, with the README's 2011-style who.ini, against real
memcached and slapd: our filter, stock ``egg:repoze.who#config``, stock
``make_api_factory_with_config``, an ``APIFactory`` built by hand from a ``WhoConfig`` (as
frameworks do), and configuration from Python."""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from backends_for_tests import CountingAuthenticator
from conftest import SECRET
from paste.deploy import loadapp
from repoze.who.api import APIFactory
from repoze.who.classifiers import default_challenge_decider, default_request_classifier
from repoze.who.config import WhoConfig
from repoze.who.config import make_api_factory_with_config as stock_api_factory_with_config
from webtest import TestApp

from repoze_who_memcached import CachingPlugin, make_plugin
from repoze_who_memcached.basicauth import BasicAuthPlugin
from repoze_who_memcached.ldap import make_authenticator
from repoze_who_memcached.pipeline import make_api_factory_with_config
from repoze_who_memcached.plugin import ENVIRON_KEY

# The README's who.ini of the 2011 style: the wrapped plugin listed as ``ldap;unused``.
WHO_2011 = """
    [plugin:basicauth]
    use = repoze_who_memcached.basicauth:make_plugin
    realm = example

    [plugin:ldap]
    use = repoze_who_memcached.ldap:make_authenticator
    url = {slapd.url}
    base_dn = {slapd.users_base_dn}
    bind_dn = {slapd.reader_dn}
    bind_password = {slapd.reader_password}

    [plugin:cached_ldap]
    use = repoze_who_memcached:make_plugin
    memcached_urls = {memcached.url}
    authenticator_name = ldap
    secret = {secret}
    ttl = 300
    {general}
    [identifiers]
    plugins = basicauth

    [authenticators]
    plugins = cached_ldap ldap;unused

    [challengers]
    plugins = basicauth
"""
# Stock repoze.who needs a request classifier with ``name;unused`` (it tests
# ``None in "unused"`` without one); our loader does not.
GENERAL = """
    [general]
    request_classifier = repoze.who.classifiers:default_request_classifier
    challenge_decider = repoze.who.classifiers:default_challenge_decider
"""
ALICE_DN = "uid=alice,ou=people,dc=example,dc=org"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def write_who_ini(tmp_path, slapd, memcached, general: str) -> str:
    path = tmp_path / "who.ini"
    path.write_text(textwrap.dedent(WHO_2011.format(
        slapd=slapd, memcached=memcached, secret=SECRET, general=general.strip())))
    return str(path)


def api_app(factory: Callable[[dict], Any]) -> Callable:
    """A WSGI app that authenticates through a repoze.who API factory, as frameworks do."""

    def app(environ, start_response):
        api = factory(environ)
        identity = api.authenticate()
        if identity is None:
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"no"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        outcome = environ.get(ENVIRON_KEY, {}).get("cached_ldap", {}).get("authenticate")
        return [f"{identity['repoze.who.userid']} {outcome}".encode()]

    return app


def filter_app(tmp_path, who_ini: str, use: str) -> TestApp:
    ini = tmp_path / "app.ini"
    ini.write_text(textwrap.dedent(f"""
        [app:demo]
        use = egg:repoze_who_memcached#demo

        [filter:auth]
        use = {use}
        config_file = {who_ini}

        [pipeline:main]
        pipeline = auth demo
    """))
    return TestApp(loadapp(f"config:{ini}"))


def outcome_of(app: TestApp, response) -> str:
    if response.content_type == "application/json":
        return response.json["cache"]["cached_ldap"]["authenticate"]
    return response.text.split()[-1]


def open_route(route: str, tmp_path, slapd, memcached) -> tuple[TestApp, str]:
    """The app of one route and the query string that makes it answer in JSON."""
    if route == "our filter":
        who_ini = write_who_ini(tmp_path, slapd, memcached, "")  # no [general] needed
        return filter_app(tmp_path, who_ini, "egg:repoze_who_memcached"), "?format=json"
    who_ini = write_who_ini(tmp_path, slapd, memcached, GENERAL)
    if route == "stock egg:repoze.who#config":
        return filter_app(tmp_path, who_ini, "egg:repoze.who#config"), "?format=json"
    if route == "stock make_api_factory_with_config":
        factory = stock_api_factory_with_config({"here": str(tmp_path)}, who_ini)
    elif route == "our make_api_factory_with_config":
        factory = make_api_factory_with_config({"here": str(tmp_path)}, who_ini)
    else:  # an APIFactory built by hand from a WhoConfig
        config = WhoConfig(str(tmp_path))
        with open(who_ini) as f:
            config.parse(f)
        factory = APIFactory(config.identifiers, config.authenticators, config.challengers,
                             config.mdproviders, config.request_classifier,
                             config.challenge_decider)
    return TestApp(api_app(factory)), ""


ROUTES = ["our filter", "stock egg:repoze.who#config", "stock make_api_factory_with_config",
          "our make_api_factory_with_config", "APIFactory from WhoConfig"]


@pytest.mark.parametrize("route", ROUTES)
def test_2011_who_ini_under_every_route(route, tmp_path, slapd, memcached):
    app, query = open_route(route, tmp_path, slapd, memcached)
    binds = slapd.bind_count(ALICE_DN)
    first = app.get("/" + query, headers=basic("alice", "wonderland"))
    assert outcome_of(app, first) == "miss"
    assert slapd.bind_count(ALICE_DN) == binds + 1  # the directory was asked
    second = app.get("/" + query, headers=basic("alice", "wonderland"))
    assert outcome_of(app, second) == "hit"
    assert slapd.bind_count(ALICE_DN) == binds + 1  # and not again
    app.get("/" + query, headers=basic("alice", "wrong"), status=401)
    app.get("/" + query, status=401)


def test_our_loader_needs_no_request_classifier_for_unused(tmp_path, slapd, memcached):
    """Stock repoze.who raises TypeError on ``ldap;unused`` without ``[general]``; our loader
    drops the wrapped plugin from the list, so it never has to classify it."""
    who_ini = write_who_ini(tmp_path, slapd, memcached, "")
    factory = make_api_factory_with_config({"here": str(tmp_path)}, who_ini)
    app = TestApp(api_app(factory))
    assert app.get("/", headers=basic("alice", "wonderland")).text == f"{ALICE_DN} miss"
    app.get("/", headers=basic("alice", "wrong"), status=401)


@pytest.mark.parametrize("route", ["stock make_api_factory_with_config",
                                   "APIFactory from WhoConfig"])
def test_stock_loaders_name_the_cache_after_its_section(route, tmp_path, slapd, memcached):
    app, _ = open_route(route, tmp_path, slapd, memcached)
    assert app.get("/", headers=basic("alice", "wonderland")).text == f"{ALICE_DN} miss"


def test_configured_from_python_with_plugin_objects(slapd, memcached):
    """The README's "configured from Python" example: plugin objects, not specs."""
    ldap = make_authenticator(url=slapd.url, base_dn=slapd.users_base_dn,
                              bind_dn=slapd.reader_dn, bind_password=slapd.reader_password)
    cache = make_plugin(authenticator=ldap, secret=SECRET, memcached_urls=memcached.url,
                        ttl=300, name="cached_ldap")
    basicauth = BasicAuthPlugin("example")
    factory = APIFactory([("basicauth", basicauth)], [("cached_ldap", cache)],
                         [("basicauth", basicauth)], [], default_request_classifier,
                         default_challenge_decider)
    app = TestApp(api_app(factory))
    assert app.get("/", headers=basic("alice", "wonderland")).text == f"{ALICE_DN} miss"
    assert app.get("/", headers=basic("alice", "wonderland")).text == f"{ALICE_DN} hit"
    app.get("/", headers=basic("alice", "wrong"), status=401)


def test_caching_plugin_takes_specs_and_objects(memcached):
    by_spec = make_plugin(authenticator="backends_for_tests:CountingAuthenticator",
                          secret=SECRET, memcached_urls=memcached.url)
    assert type(by_spec.authenticator).__name__ == "CountingAuthenticator"
    obj = by_spec.authenticator
    direct = CachingPlugin(secret=SECRET, backend=by_spec.backend,
                           authenticator="backends_for_tests:CountingAuthenticator",
                           mdprovider="backends_for_tests:CountingMetadata")
    assert type(direct.mdprovider).__name__ == "CountingMetadata"
    assert make_plugin(authenticator=obj, secret=SECRET,
                       memcached_urls=memcached.url).authenticator is obj


def test_python_config_errors_name_the_option(memcached):
    from repoze_who_memcached import ConfigError

    with pytest.raises(ConfigError, match="option 'authenticator'.*neither a plugin"):
        make_plugin(authenticator=42, secret=SECRET, memcached_urls=memcached.url)
    with pytest.raises(ConfigError, match="'authenticator.users'"):
        make_plugin(authenticator=CountingAuthenticator(), secret=SECRET,
                    memcached_urls=memcached.url, **{"authenticator.users": "a:b"})


def ldap_operations(slapd) -> int:
    """Searches and binds slapd has logged so far (bind_count waits for a quiet log)."""
    slapd.bind_count()
    return sum(1 for line in slapd.read_log().splitlines()
               if " SRCH base=" in line or " BIND dn=" in line)


def test_cookie_identities_are_not_cached_as_logins(tmp_path, slapd, memcached):
    """auth_tkt identities carry no login: they go to the wrapped plugin uncached, are not
    stored, and count neither as misses nor as (negative) hits."""
    ini = tmp_path / "app.ini"
    ini.write_text(textwrap.dedent(f"""
        [app:demo]
        use = egg:repoze_who_memcached#demo

        [filter:auth]
        use = egg:repoze_who_memcached
        identifiers = tkt basicauth
        authenticators = tkt
        plugin.tkt = repoze.who.plugins.auth_tkt:make_plugin
        plugin.tkt.secret = another-long-secret-for-tickets
        authenticator = repoze_who_memcached.ldap:make_authenticator
        authenticator.url = {slapd.url}
        authenticator.base_dn = {slapd.users_base_dn}
        authenticator.bind_dn = {slapd.reader_dn}
        authenticator.bind_password = {slapd.reader_password}
        memcached_urls = {memcached.url}
        secret = {SECRET}
        negative_ttl = 60

        [pipeline:main]
        pipeline = auth demo
    """))
    app = TestApp(loadapp(f"config:{ini}"))
    assert app.get("/?format=json", headers=basic("alice", "wonderland")).json["userid"] \
        == ALICE_DN
    tkt = app.app.api_factory.name_registry["tkt"]
    cookie = tkt.remember({"HTTP_HOST": "localhost", "REMOTE_ADDR": "127.0.0.1"},
                          {"repoze.who.userid": ALICE_DN})[0][1].split(";")[0]
    cache = app.app.cache_plugins[0]
    counts = cache.counters.snapshot()
    stored = set(memcached.stored_keys())
    operations = ldap_operations(slapd)
    for _ in range(20):
        body = app.get("/?format=json", headers={"Cookie": cookie}).json
        assert body["userid"] == ALICE_DN
        assert body["cache"]["cache"]["authenticate"] == "uncached"
    after = cache.counters.snapshot()
    for counter in ("misses", "hits", "negative_hits", "coalesced"):
        assert after[counter] == counts[counter], counter
    assert set(memcached.stored_keys()) == stored  # nothing stored for them
    assert ldap_operations(slapd) == operations  # and the directory was not asked


def test_filter_errors_name_the_filter_section(tmp_path, memcached):
    from repoze_who_memcached import ConfigError

    ini = tmp_path / "app.ini"
    ini.write_text(textwrap.dedent(f"""
        [app:demo]
        use = egg:repoze_who_memcached#demo

        [filter:auth]
        use = egg:repoze_who_memcached
        authenticator = backends_for_tests:make_authenticator
        memcached_urls = {memcached.url}
        secret = {SECRET}
        tll = 60

        [pipeline:main]
        pipeline = auth demo
    """))
    with pytest.raises(ConfigError) as caught:
        loadapp(f"config:{ini}")
    assert str(caught.value) == "[filter:auth]: unknown option 'tll'"


@pytest.mark.parametrize(("line", "message"), [
    ("tll = 60", "[plugin:cached_ldap]: unknown option 'tll'"),
    ("mdprovider = repoze_who_memcached.ldap:make_metadata_provider\n"
     "mdprovider.url = ldap://127.0.0.1:1\n"
     "mdprovider.base_dn = dc=example,dc=org\n"
     "mdprovider.attribute = mail",
     "[plugin:cached_ldap]: unknown option 'mdprovider.attribute'"),
    ("ttl = soon", "[plugin:cached_ldap]: option 'ttl': expected a whole number"),
])
def test_who_ini_errors_name_the_section_and_full_option(line, message, tmp_path, slapd,
                                                         memcached):
    from repoze_who_memcached import ConfigError
    from repoze_who_memcached.pipeline import load_who_config

    who_ini = write_who_ini(tmp_path, slapd, memcached, "")
    path = tmp_path / "who.ini"
    path.write_text(path.read_text().replace("ttl = 300", line))
    with pytest.raises(ConfigError) as caught:
        load_who_config(who_ini)
    assert str(caught.value).startswith(f"{who_ini}: {message}")


def test_a_misspelt_ldap_sub_option_is_reported_as_unknown(tmp_path, slapd, memcached):
    from repoze_who_memcached import ConfigError
    from repoze_who_memcached.pipeline import load_who_config

    path = tmp_path / "who.ini"
    path.write_text(textwrap.dedent(f"""
        [plugin:cached_ldap]
        use = repoze_who_memcached:make_plugin
        memcached_urls = {memcached.url}
        secret = {SECRET}
        authenticator = repoze_who_memcached.ldap:make_authenticator
        authenticator.url = {slapd.url}
        authenticator.basedn = {slapd.users_base_dn}

        [identifiers]
        plugins = basicauth
        [authenticators]
        plugins = cached_ldap
    """))
    with pytest.raises(ConfigError) as caught:
        load_who_config(str(path))
    message = str(caught.value)
    assert "[plugin:cached_ldap]" in message
    assert "unknown option 'authenticator.basedn'" in message


def test_changing_the_directory_configuration_leaves_old_entries_unused(slapd, memcached):
    """Entries are bound to the wrapped LDAP plugin's configuration (cache_fingerprint):
    another base DN or filter is another backend; the same configuration shares entries."""
    def cache(**ldap_options):
        options = {"url": slapd.url, "base_dn": slapd.users_base_dn,
                   "bind_dn": slapd.reader_dn, "bind_password": slapd.reader_password,
                   **ldap_options}
        return make_plugin(authenticator=make_authenticator(**options), secret=SECRET,
                           memcached_urls=memcached.url, name="cached_ldap")

    def outcome(plugin) -> str:
        environ: dict = {}
        plugin.authenticate(environ, {"login": "alice", "password": "wonderland"})
        return environ[ENVIRON_KEY]["cached_ldap"]["authenticate"]

    assert outcome(cache()) == "miss"
    assert outcome(cache()) == "hit"  # another app server, same configuration
    assert outcome(cache(base_dn="dc=example,dc=org")) == "miss"
    assert outcome(cache(filter="(&(objectClass=inetOrgPerson)(uid={login}))")) == "miss"

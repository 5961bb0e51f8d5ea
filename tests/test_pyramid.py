"""Pyramid 2 over repoze.who (``repoze_who_memcached.pyramid``), with real Pyramid, a real
slapd and a real memcached: over WebTest, and over HTTP through waitress.

The app is what a Pyramid user writes: ``config.include("repoze_who_memcached.pyramid")``
with ``who.*`` settings (or ``who.config_file``), an ACL that gives ``view`` to the group
``admins`` (alice is in it; bob is only in ``staff``), and a public page.
"""

from __future__ import annotations

import base64
import http.client
import json
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("pyramid")

from conftest import SECRET, serving
from ldap_fixtures import ldap_options
from pyramid.authorization import Allow, Authenticated
from pyramid.config import Configurator
from pyramid.security import forget, remember
from repoze.who.api import APIFactory
from repoze.who.classifiers import default_challenge_decider, default_request_classifier
from webtest import TestApp

from repoze_who_memcached import ConfigError
from repoze_who_memcached.basicauth import BasicAuthPlugin
from repoze_who_memcached.plugin import ENVIRON_KEY
from repoze_who_memcached.pyramid import WhoSecurityPolicy, api_factory_from_settings

PASSWORDS = {"alice": "wonderland", "bob": "builder", "zo\u00eb": "p\u00e4ssw\u00f6rd"}


def basic(login: str, password: str, encoding: str = "utf-8") -> dict[str, str]:
    token = base64.b64encode(f"{login}:{password}".encode(encoding)).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class Root:
    """The resource tree: one ACL for the whole app."""

    __acl__ = [(Allow, "group:admins", "admin"), (Allow, Authenticated, "member")]

    def __init__(self, request: Any) -> None:
        self.request = request


def whoami(request: Any) -> dict[str, Any]:
    identity = request.identity or {}
    return {
        "userid": request.authenticated_userid,
        "groups": identity.get("groups"),
        "cache": request.environ.get(ENVIRON_KEY, {}),
    }


def public(request: Any) -> dict[str, Any]:
    return {"userid": request.authenticated_userid}


def logout(request: Any) -> Any:
    response = request.response
    response.headerlist.extend(forget(request))
    response.json_body = {"userid": request.authenticated_userid}
    return response


def make_app(settings: dict[str, str], *, include: bool = True,
             policy: WhoSecurityPolicy | None = None) -> Any:
    with Configurator(settings=settings, root_factory=Root) as config:
        if include:
            config.include("repoze_who_memcached.pyramid")
        if policy is not None:
            config.set_security_policy(policy)
        config.add_route("admin", "/admin")
        config.add_route("members", "/members")
        config.add_route("public", "/")
        config.add_route("logout", "/logout")
        config.add_view(whoami, route_name="admin", permission="admin", renderer="json")
        config.add_view(whoami, route_name="members", permission="member", renderer="json")
        config.add_view(public, route_name="public", renderer="json")
        config.add_view(logout, route_name="logout")
        return config.make_wsgi_app()


def ldap_settings(slapd: Any, memcached: Any, **extra: str) -> dict[str, str]:
    """The README's Pyramid settings: our LDAP plugins wrapped by the cache, basic auth."""
    settings = {"who.realm": "pyramid test", "who.memcached_urls": memcached.url,
                "who.secret": SECRET, "who.ttl": "300",
                "who.authenticator": "egg:repoze_who_memcached#ldap_authenticator",
                "who.mdprovider": "egg:repoze_who_memcached#ldap_metadata",
                "who.mdprovider.group_base_dn": slapd.groups_base_dn}
    for role in ("authenticator", "mdprovider"):
        for name, value in ldap_options(slapd, userid_attribute="uid").items():
            settings[f"who.{role}.{name}"] = value
    settings.update(extra)
    return settings


@pytest.fixture
def app(slapd, memcached) -> TestApp:
    return TestApp(make_app(ldap_settings(slapd, memcached)))


# ================================================================== over WebTest


def test_anonymous_gets_the_basic_auth_challenge(app):
    response = app.get("/admin", status=401)
    assert response.headers["WWW-Authenticate"] == 'Basic realm="pyramid test"'
    assert app.get("/").json == {"userid": None}  # a public view needs no login


def test_alice_is_in_admins_bob_is_not(app, slapd):
    first = app.get("/admin", headers=basic("alice", "wonderland")).json
    assert first["userid"] == "alice"
    assert first["groups"] == ["admins", "staff"]
    assert first["cache"] == {"cache": {"authenticate": "miss", "add_metadata": "miss"}}
    binds = slapd.bind_count()

    second = app.get("/admin", headers=basic("alice", "wonderland")).json
    assert second["cache"] == {"cache": {"authenticate": "hit", "add_metadata": "hit"}}
    assert slapd.bind_count() == binds  # the hit asked the directory nothing

    app.get("/admin", headers=basic("bob", "builder"), status=403)  # logged in, not allowed
    assert app.get("/members", headers=basic("bob", "builder")).json["userid"] == "bob"


def test_a_wrong_password_is_challenged_again(app):
    app.get("/admin", headers=basic("alice", "wonderland"))  # cached: must not help
    response = app.get("/admin", headers=basic("alice", "not-her-password"), status=401)
    assert "WWW-Authenticate" in response.headers
    app.get("/members", headers=basic("nobody", "x"), status=401)
    app.get("/members", headers={"Authorization": "Basic \u00ff\u00fe"}, status=401)


def test_non_ascii_credentials_in_both_encodings(app):
    for encoding in ("utf-8", "latin-1"):  # curl, WebTest
        body = app.get("/members", headers=basic("zo\u00eb", "p\u00e4ssw\u00f6rd", encoding)).json
        assert body["userid"] == "zo\u00eb"


def test_identity_is_computed_once_per_request(slapd, memcached):
    """permits(), then the view's identity and authenticated_userid: one authentication."""
    factory = api_factory_from_settings(ldap_settings(slapd, memcached))
    authentications = []

    def counting_factory(environ: dict) -> Any:
        new = "repoze.who.api" not in environ
        api = factory(environ)
        if new:
            authenticate = api.authenticate
            api.authenticate = lambda: authentications.append(1) or authenticate()
        return api

    app = TestApp(make_app({}, include=False, policy=WhoSecurityPolicy(counting_factory)))
    assert app.get("/members", headers=basic("alice", "wonderland")).json["userid"] == "alice"
    assert len(authentications) == 1
    app.get("/members", status=403)  # anonymous, and no challenge view: Pyramid's 403
    assert len(authentications) == 2


def test_who_config_file_route(tmp_path, slapd, memcached):
    who_ini = tmp_path / "who.ini"
    ldap = "\n".join(f"{k} = {v}" for k, v in ldap_options(slapd, userid_attribute="uid").items())
    who_ini.write_text(textwrap.dedent("""\
        [plugin:basicauth]
        use = repoze_who_memcached.basicauth:make_plugin
        realm = from who.ini

        [plugin:ldap]
        use = repoze_who_memcached.ldap:make_authenticator
        {ldap}

        [plugin:ldap_metadata]
        use = repoze_who_memcached.ldap:make_metadata_provider
        group_base_dn = {groups}
        {ldap}

        [plugin:cached]
        use = repoze_who_memcached:make_plugin
        authenticator_name = ldap
        mdprovider_name = ldap_metadata
        memcached_urls = {memcached}
        secret = {secret}

        [identifiers]
        plugins = basicauth
        [authenticators]
        plugins = cached
        [mdproviders]
        plugins = cached
        [challengers]
        plugins = basicauth
        """).format(ldap=ldap, groups=slapd.groups_base_dn,
                    memcached=memcached.url, secret=SECRET))
    app = TestApp(make_app({"who.config_file": str(who_ini)}))
    assert app.get("/admin", status=401).headers["WWW-Authenticate"] == 'Basic realm="from who.ini"'
    first = app.get("/admin", headers=basic("alice", "wonderland")).json
    assert first["groups"] == ["admins", "staff"]
    assert first["cache"] == {"cached": {"authenticate": "miss", "add_metadata": "miss"}}
    second = app.get("/admin", headers=basic("alice", "wonderland")).json
    assert second["cache"] == {"cached": {"authenticate": "hit", "add_metadata": "hit"}}
    app.get("/admin", headers=basic("bob", "builder"), status=403)


def test_remember_and_forget_go_through_the_identifiers(slapd, memcached):
    """With auth_tkt as first identifier, remember() sets its cookie, which then logs in
    with no credentials and no cache traffic; forget() clears it."""
    settings = ldap_settings(slapd, memcached, **{
        "who.identifiers": "auth_tkt basicauth",
        "who.authenticators": "auth_tkt",
        "who.plugin.auth_tkt.secret": "a" * 32,
    })
    with Configurator(settings=settings, root_factory=Root) as config:
        config.include("repoze_who_memcached.pyramid")

        def login(request: Any) -> Any:
            response = request.response
            response.headerlist.extend(remember(request, request.authenticated_userid))
            response.json_body = whoami(request)
            return response

        config.add_route("login", "/login")
        config.add_route("members", "/members")
        config.add_route("logout", "/logout")
        config.add_view(login, route_name="login", permission="member")
        config.add_view(whoami, route_name="members", permission="member", renderer="json")
        config.add_view(logout, route_name="logout")
        app = TestApp(config.make_wsgi_app())
    response = app.get("/login", headers=basic("alice", "wonderland"))
    assert any(name == "Set-Cookie" and value.startswith("auth_tkt=")
               for name, value in response.headerlist)
    body = app.get("/members").json  # the cookie alone
    assert body["userid"] == "alice"
    assert body["cache"]["cache"]["authenticate"] == "uncached"  # no login: nothing to cache
    response = app.get("/logout")
    assert any(name == "Set-Cookie" and 'auth_tkt="INVALID"' in value
               for name, value in response.headerlist)
    app.cookiejar.clear()
    app.get("/members", status=401)


def test_a_hand_built_api_factory_works_too(slapd, memcached):
    """The policy over repoze.who's own APIFactory, configured from Python."""
    from repoze_who_memcached import make_plugin
    from repoze_who_memcached.ldap import make_authenticator

    ldap = make_authenticator(**ldap_options(slapd, userid_attribute="uid"))
    cache = make_plugin(authenticator=ldap, secret=SECRET, memcached_urls=memcached.url,
                        name="cached_ldap")
    basicauth = BasicAuthPlugin("python")
    factory = APIFactory([("basicauth", basicauth)], [("cached_ldap", cache)],
                         [("basicauth", basicauth)], [], default_request_classifier,
                         default_challenge_decider)
    app = TestApp(make_app({}, include=False, policy=WhoSecurityPolicy(factory)))
    assert app.get("/members", headers=basic("bob", "builder")).json["userid"] == "bob"
    app.get("/admin", headers=basic("alice", "wonderland"), status=403)  # no groups here
    # No challenge view registered (no includeme): Pyramid's own 403.
    app.get("/members", status=403)


def test_principals_never_confuse_a_userid_with_a_group():
    policy = WhoSecurityPolicy(lambda environ: None)

    class FakeRequest:
        def __init__(self, identity: dict | None) -> None:
            self.environ = {"repoze.who.identity": identity}

    def principals(identity: dict | None) -> list[str]:
        return policy.principals(FakeRequest(identity))

    assert principals({"repoze.who.userid": "group:admins"}) == [
        "system.Everyone", "system.Authenticated"]
    assert principals({"repoze.who.userid": "u", "groups": "staff"})[-1] == "group:staff"
    assert principals({"repoze.who.userid": "u", "groups": ["a", 3, b"b"]})[-1] == "group:a"
    assert principals({"repoze.who.userid": "u", "groups": {"admins": 1}}) == [
        "system.Everyone", "system.Authenticated", "u"]
    with pytest.raises(ConfigError, match="group_prefix"):
        WhoSecurityPolicy(lambda environ: None, group_prefix="")


# ================================================================== configuration errors


@pytest.mark.parametrize(("extra", "message"), [
    ({"who.tll": "5"}, "Pyramid settings: unknown option 'who.tll'"),
    ({"who.ttl": "soon"}, "Pyramid settings: option 'who.ttl'"),
    ({"who.authenticator.basedn": "x"}, "'who.authenticator.b"),
    ({"who.group_prefix": ""}, "Pyramid settings: option 'who.group_prefix'"),
])
def test_a_bad_setting_fails_at_start_up_naming_it(slapd, memcached, extra, message):
    with pytest.raises(ConfigError) as info:
        make_app(ldap_settings(slapd, memcached, **extra))
    assert message in str(info.value)
    assert SECRET not in str(info.value) and slapd.reader_password not in str(info.value)


def test_no_who_settings_or_a_missing_who_ini_fail_loudly(tmp_path):
    with pytest.raises(ConfigError, match="no who.. settings"):
        make_app({"other": "x"})
    with pytest.raises(ConfigError, match="'who.config_file': no such file"):
        make_app({"who.config_file": str(tmp_path / "missing.ini")})


# ================================================================== over HTTP (waitress)


@pytest.fixture
def served(slapd, memcached) -> Iterator[int]:
    with serving(make_app(ldap_settings(slapd, memcached))) as port:
        yield port


def http_get(port: int, path: str, headers: dict[str, str] | None = None,
             ) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def test_over_http_through_waitress(served, slapd):
    status, headers, _ = http_get(served, "/admin")
    assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="pyramid test"'

    status, _, body = http_get(served, "/admin", basic("alice", "wonderland"))
    assert status == 200
    assert json.loads(body)["cache"] == {"cache": {"authenticate": "miss",
                                                   "add_metadata": "miss"}}
    binds = slapd.bind_count()
    status, _, body = http_get(served, "/admin", basic("alice", "wonderland"))
    assert status == 200
    assert json.loads(body)["cache"] == {"cache": {"authenticate": "hit", "add_metadata": "hit"}}
    assert slapd.bind_count() == binds

    assert http_get(served, "/admin", basic("bob", "builder"))[0] == 403
    assert http_get(served, "/admin", basic("alice", "wrong"))[0] == 401
    status, _, body = http_get(served, "/members", basic("zo\u00eb", "p\u00e4ssw\u00f6rd"))
    assert status == 200 and json.loads(body)["userid"] == "zo\u00eb"

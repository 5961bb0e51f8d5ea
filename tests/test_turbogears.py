"""The README's TurboGears 2 recipe, run with the real framework, a real slapd and memcached.

TurboGears drives repoze.who through its own middleware (``sa_auth``): its form plugin
identifies logins posted to ``/login_handler`` and remembers them in an ``auth_tkt`` cookie
that identifies every later request. Our cache wraps our LDAP authenticator (form logins:
a miss, then a hit) and our LDAP metadata provider (the groups ``in_group`` checks). A
cookie-authenticated request is not a login: its authentication is the cookie's own check
(the cache leaves it alone: ``uncached``) and its metadata comes from the near cache, so it
costs memcached nothing and the directory nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("tg")

from conftest import SECRET
from ldap_fixtures import ldap_options
from tg import MinimalApplicationConfigurator, TGController, expose, request, require
from tg.configuration.auth import TGAuthMetadata
from tg.configurator.components.auth import SimpleAuthenticationConfigurationComponent
from tg.predicates import in_group, not_anonymous
from webtest import TestApp

from repoze_who_memcached import make_plugin
from repoze_who_memcached.ldap import make_authenticator, make_metadata_provider
from repoze_who_memcached.plugin import ENVIRON_KEY


class LdapAuthMetadata(TGAuthMetadata):
    """TurboGears asks this for the user and groups: they are already in the identity,
    put there by the LDAP metadata provider (through the cache)."""

    def get_user(self, identity: dict, userid: str) -> dict:
        return {"user_name": userid, "name": identity.get("name")}

    def get_groups(self, identity: dict, userid: str) -> list[str]:
        return list(identity.get("groups") or [])

    def get_permissions(self, identity: dict, userid: str) -> list[str]:
        return []


def whoami() -> dict[str, Any]:
    identity = request.identity or {}
    return {"userid": identity.get("repoze.who.userid"), "groups": identity.get("groups"),
            "cache": request.environ.get(ENVIRON_KEY, {})}


class RootController(TGController):
    @expose("json")
    @require(in_group("admins"))
    def admin(self) -> dict[str, Any]:
        return whoami()

    @expose("json")
    @require(not_anonymous())
    def members(self) -> dict[str, Any]:
        return whoami()

    @expose()
    def login(self, **kw: Any) -> str:
        return "the login form"

    @expose("json")
    def welcome(self, **kw: Any) -> dict[str, Any]:
        return whoami()


def make_app(slapd: Any, memcached: Any) -> tuple[Any, Any]:
    """The recipe of the README's TurboGears section: the app, and its cache plugin."""
    ldap = ldap_options(slapd, userid_attribute="uid")
    cache = make_plugin(
        authenticator=make_authenticator(**ldap),
        mdprovider=make_metadata_provider(**ldap, attributes="cn=name",
                                          group_base_dn=slapd.groups_base_dn),
        memcached_urls=memcached.url, secret=SECRET, ttl=300, name="cached_ldap",
        # Cookie requests re-read the metadata: the near cache answers them in-process.
        local_ttl=60, local_check_interval=60,
    )
    config = MinimalApplicationConfigurator()
    config.register(SimpleAuthenticationConfigurationComponent)
    config.update_blueprint({
        "root_controller": RootController(),
        "renderers": ["json"],
        "sa_auth.enabled": True,
        "sa_auth.cookie_secret": "test-cookie-secret-" + SECRET,
        "sa_auth.authmetadata": LdapAuthMetadata(),
        # Without ("default", None) TurboGears adds no authenticator of its own but the
        # auth_tkt cookie's, before ours.
        "sa_auth.authenticators": [("cached_ldap", cache)],
        "sa_auth.mdproviders": [("cached_ldap", cache)],
        "sa_auth.post_login_url": "/welcome",
    })
    return config.make_wsgi_app(), cache


def memcached_traffic(memcached: Any) -> dict[str, int]:
    """memcached's own count of reads and writes (``stats``)."""
    stats = {}
    for line in memcached.raw_command(b"stats\r\n").decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "STAT":
            stats[parts[1]] = parts[2]
    return {name: int(stats[name]) for name in ("cmd_get", "cmd_set", "cmd_touch")}


def form_login(app: TestApp, login: str, password: str) -> Any:
    return app.post("/login_handler", {"login": login, "password": password}, status=302)


@pytest.fixture
def app(slapd, memcached) -> TestApp:
    return TestApp(make_app(slapd, memcached)[0])


def test_anonymous_is_sent_to_the_login_form(app):
    response = app.get("/members", status=302)
    assert response.headers["Location"].startswith("http://localhost/login?came_from=")


def test_form_login_miss_then_hit_then_cookie_requests_without_cache_traffic(
        slapd, memcached):
    wsgi_app, cache = make_app(slapd, memcached)
    app = TestApp(wsgi_app)
    response = form_login(app, "alice", "wonderland")
    assert any(value.startswith("authtkt=") for name, value in response.headerlist
               if name == "Set-Cookie")
    first = response.follow().json
    assert first["userid"] == "alice"
    assert first["groups"] == ["admins", "staff"]
    counts = cache.counters.snapshot()
    assert counts["misses"] == 2 and counts["hits"] == 0  # authenticate, add_metadata

    # Another browser (no cookie) logs in as alice on another app server sharing memcached:
    # a hit for both, and no LDAP bind.
    binds = slapd.bind_count()
    other_app, other_cache = make_app(slapd, memcached)
    other = TestApp(other_app)
    second = form_login(other, "alice", "wonderland")
    assert second.follow().json["userid"] == "alice"
    assert other_cache.counters.snapshot()["hits"] == 2
    assert other_cache.counters.snapshot()["misses"] == 0
    assert slapd.bind_count() == binds

    # The first browser's later requests carry only the cookie.
    traffic = memcached_traffic(memcached)
    for _ in range(3):
        body = app.get("/admin").json
        assert body["userid"] == "alice" and body["groups"] == ["admins", "staff"]
        assert body["cache"] == {"cached_ldap": {"authenticate": "uncached",
                                                 "add_metadata": "local_hit"}}
    assert memcached_traffic(memcached) == traffic
    assert slapd.bind_count() == binds


def test_bob_is_not_an_admin_and_a_wrong_password_logs_nobody_in(app):
    form_login(app, "bob", "builder")
    app.get("/admin", status=403)
    assert app.get("/members").json["groups"] == ["staff"]
    app.reset()
    response = form_login(app, "alice", "not-her-password")
    assert not any(value.startswith("authtkt=") and "INVALID" not in value
                   for name, value in response.headerlist if name == "Set-Cookie")
    app.get("/members", status=302)  # back to the login form

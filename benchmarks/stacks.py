"""The WSGI stacks the benchmarks compare, all with Basic credentials in front of one tiny app.

* stock repoze.who (``PluggableAuthenticationMiddleware``) with basic auth and an
  authenticator that accepts everyone: the framework's floor;
* the same floor through our PasteDeploy filter (``build_middleware_factory``, ``cache =
  false``), which verifies plugin interfaces once at load time;
* our filter with our LDAP authenticator, uncached and cached (python-memcached, pymemcache);
* what a user would build instead: the same LDAP authenticator memoized with a dogpile.cache
  region on memcached, inside stock repoze.who.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from repoze.who.classifiers import default_challenge_decider, default_request_classifier
from repoze.who.interfaces import IAuthenticator
from repoze.who.middleware import PluggableAuthenticationMiddleware
from repoze.who.plugins.basicauth import BasicAuthPlugin
from webob import Request
from zope.interface import implementer

from repoze_who_memcached.ldap import make_authenticator
from repoze_who_memcached.pipeline import DEFAULT_REALM, build_middleware_factory

from .servers import PEOPLE_DN, READER_DN, READER_PASSWORD

SECRET = "8njfjWKw9fjAASRKasl2xpLIqtzdJ69MIY4oaKQ5Kv0"  # random: passes check_secret_strength
TTL = 3600  # long enough that nothing expires during a run

Wsgi = Callable[[dict, Callable[..., Any]], Iterable[bytes]]


def hello_app(environ: dict, start_response: Callable[..., Any]) -> list[bytes]:
    body = (environ.get("REMOTE_USER") or "-").encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _start_response(status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
    return _write


def _write(data: bytes) -> None:
    pass


@implementer(IAuthenticator)
class AcceptAll:
    """Authenticates every identity as its login: the cheapest possible authenticator."""

    def authenticate(self, environ: dict, identity: dict) -> Any:
        return identity.get("login")


def make_accept_all(**options: Any) -> AcceptAll:
    if options:
        raise TypeError(f"accept-all takes no options: {sorted(options)}")
    return AcceptAll()


ACCEPT_ALL_SPEC = "benchmarks.stacks:make_accept_all"
LDAP_SPEC = "repoze_who_memcached.ldap:make_authenticator"


def ldap_options(slapd_url: str, pool_size: int = 4,
                 ldap_library: str | None = None) -> dict[str, str]:
    """Our LDAP authenticator's options (as strings, as an ini gives them); ``ldap_library``
    only when asked for (a build without the option refuses it)."""
    options = {
        "url": slapd_url,
        "base_dn": PEOPLE_DN,
        "bind_dn": READER_DN,
        "bind_password": READER_PASSWORD,
        "userid_attribute": "uid",
        "pool_size": str(pool_size),
    }
    if ldap_library is not None:
        options["ldap_library"] = ldap_library
    return options


def make_ldap(slapd_url: str, pool_size: int = 4) -> Any:
    return make_authenticator(**ldap_options(slapd_url, pool_size))


def python_ldap_unavailable(slapd_url: str) -> str | None:
    """Why our LDAP authenticator cannot run on python-ldap here (None when it can): the
    option ``ldap_library = python-ldap`` is refused, or the library is not installed."""
    from repoze_who_memcached.errors import ConfigError

    try:
        authenticator = make_authenticator(**ldap_options(slapd_url, ldap_library="python-ldap"))
    except ConfigError:
        return "not available in this build (ldap_library = python-ldap is refused)"
    except ImportError:
        return "not installed (ldap_library = python-ldap needs the python-ldap package)"
    close = getattr(authenticator, "close", None)
    if close is not None:
        close()
    return None


# ------------------------------------------------------------------ stock repoze.who


def stock_middleware(app: Wsgi, authenticator: Any) -> PluggableAuthenticationMiddleware:
    basic = BasicAuthPlugin(DEFAULT_REALM)
    return PluggableAuthenticationMiddleware(
        app,
        identifiers=[("basicauth", basic)],
        authenticators=[("auth", authenticator)],
        challengers=[("basicauth", basic)],
        mdproviders=[],
        request_classifier=default_request_classifier,
        challenge_decider=default_challenge_decider,
    )


@implementer(IAuthenticator)
class DogpileCachedAuthenticator:
    """What a user writes to memoize an authenticator with dogpile.cache: key = a hash of
    login and password, value = whatever the authenticator answered (pickled by dogpile)."""

    def __init__(self, authenticator: Any, region: Any, prefix: str = "auth:") -> None:
        self.authenticator = authenticator
        self.region = region
        self.prefix = prefix

    def authenticate(self, environ: dict, identity: dict) -> Any:
        login = identity.get("login")
        password = identity.get("password")
        if not login or not password:
            return None
        key = self.prefix + hashlib.sha256(f"{login}:{password}".encode()).hexdigest()
        return self.region.get_or_create(
            key, lambda: self.authenticator.authenticate(environ, identity)
        )


DOGPILE_BACKENDS = {
    "python-memcached": "dogpile.cache.memcached",
    "pymemcache": "dogpile.cache.pymemcache",
}


def dogpile_region(client: str, memcached_urls: list[str]) -> Any:
    from dogpile.cache import make_region

    return make_region().configure(
        DOGPILE_BACKENDS[client], expiration_time=TTL, arguments={"url": list(memcached_urls)}
    )


# ------------------------------------------------------------------ our filter


def our_filter(app: Wsgi, local_conf: dict[str, str]) -> Any:
    """Our PasteDeploy filter, built as PasteDeploy would (all options are strings)."""
    return build_middleware_factory({}, local_conf)(app)


def our_floor(app: Wsgi) -> Any:
    return our_filter(app, {"cache": "false", "authenticator": ACCEPT_ALL_SPEC})


def our_ldap_uncached(app: Wsgi, slapd_url: str, pool_size: int = 4,
                      ldap_library: str | None = None) -> Any:
    conf = {"cache": "false", "authenticator": LDAP_SPEC}
    conf.update({f"authenticator.{k}": v
                 for k, v in ldap_options(slapd_url, pool_size, ldap_library).items()})
    return our_filter(app, conf)


def our_cached(app: Wsgi, memcached_urls: list[str], client: str, *,
               slapd_url: str | None = None, pool_size: int = 4,
               ldap_library: str | None = None, **cache_options: str) -> Any:
    """Our filter with the cache on, wrapping our LDAP authenticator (or, with no
    ``slapd_url``, the accept-all authenticator)."""
    conf = {
        "memcached_urls": " ".join(memcached_urls),
        "memcached_client": client,
        "secret": SECRET,
        "ttl": str(TTL),
    }
    if slapd_url is None:
        conf["authenticator"] = ACCEPT_ALL_SPEC
    else:
        conf["authenticator"] = LDAP_SPEC
        conf.update({f"authenticator.{k}": v
                     for k, v in ldap_options(slapd_url, pool_size, ldap_library).items()})
    conf.update(cache_options)
    return our_filter(app, conf)


def cache_plugin(middleware: Any) -> Any:
    """The CachingPlugin inside one of our filters."""
    return middleware.cache_plugins[0]


# ------------------------------------------------------------------ requests


def basic_header(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode("ascii")


def basic_environ(login: str, password: str, path: str = "/") -> dict:
    """A complete WSGI environ of a GET with Basic credentials."""
    request = Request.blank(path, headers={"Authorization": basic_header(login, password),
                                           "User-Agent": "benchmarks/1.0"})
    return dict(request.environ)


def call(app: Wsgi, environ: dict) -> dict:
    """One request; returns the environ the app saw (for checks)."""
    env = dict(environ)
    body = app(env, _start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return env


def wsgi_case(app: Wsgi, environ: dict) -> Callable[[], None]:
    """A zero-argument request for the harness: a fresh copy of ``environ`` each time."""
    return cycling_case(app, [environ])


def cycling_case(app: Wsgi, environs: list[dict]) -> Callable[[], None]:
    """Like :func:`wsgi_case`, but each call takes the next of several identities."""
    bases = [dict(e) for e in environs]
    count = len(bases)
    position = [0]

    def case() -> None:
        i = position[0]
        position[0] = i + 1 if i + 1 < count else 0
        call(app, bases[i])

    return case

"""Our middleware's lean request path behaves as stock repoze.who's middleware.

Each scenario runs through stock ``PluggableAuthenticationMiddleware`` and through our
``AuthMiddleware`` (no logger: the lean path; with a logger: repoze.who's own code), and the
responses and what the app saw must be the same. Pure logic: plugins are small fakes.
"""

from __future__ import annotations

import gc
import http.client
import io
import logging
import time
import tracemalloc
import weakref
from typing import Any

import pytest
from conftest import serving
from repoze.who.api import API, APIFactory
from repoze.who.classifiers import default_challenge_decider, default_request_classifier
from repoze.who.interfaces import (
    IAuthenticator,
    IChallenger,
    IIdentifier,
    IMetadataProvider,
)
from repoze.who.middleware import NoChallengersFound, PluggableAuthenticationMiddleware
from webob import Request
from webob.exc import HTTPUnauthorized
from zope.interface import implementer

import repoze_who_memcached.middleware as middleware_module
from repoze_who_memcached.middleware import AuthMiddleware, PrebuiltAPI


@implementer(IIdentifier, IChallenger)
class HeaderIdentifier:
    """Identifies from ``X-Login-<name>``; remembers with a header; challenges with 401."""

    def __init__(self, name: str, classifications: dict | None = None,
                 replace_app: bool = False) -> None:
        self.name = name
        self.replace_app = replace_app
        if classifications is not None:
            self.classifications = classifications

    def identify(self, environ: dict) -> dict | None:
        login = environ.get(f"HTTP_X_LOGIN_{self.name.upper()}")
        if login is None:
            return None
        if self.replace_app:
            environ["repoze.who.application"] = HTTPUnauthorized()
        return {"login": login, "from": self.name}

    def remember(self, environ: dict, identity: dict) -> list:
        return [("X-Remembered-By", self.name)]

    def forget(self, environ: dict, identity: dict) -> list:
        return [("X-Forgotten-By", self.name)]

    def challenge(self, environ: dict, status: str, app_headers: list,
                  forget_headers: list) -> Any:
        return HTTPUnauthorized(headers=[("X-Challenged-By", self.name), *forget_headers])


@implementer(IAuthenticator)
class PrefixAuthenticator:
    """Accepts logins starting with ``prefix``, as ``<name>:<login>``."""

    def __init__(self, name: str, prefix: str, classifications: dict | None = None) -> None:
        self.name = name
        self.prefix = prefix
        self.calls: list[str] = []
        if classifications is not None:
            self.classifications = classifications

    def authenticate(self, environ: dict, identity: dict) -> str | None:
        self.calls.append(identity["login"])
        login = identity["login"]
        return f"{self.name}:{login}" if login.startswith(self.prefix) else None


@implementer(IMetadataProvider)
class Groups:
    def add_metadata(self, environ: dict, identity: dict) -> None:
        identity["groups"] = ["g-" + identity["repoze.who.userid"]]


def seen_app(environ: dict, start_response: Any) -> list[bytes]:
    """Answers what it saw; 401 for ``/private`` without a user."""
    identity = environ.get("repoze.who.identity") or {}
    body = repr((environ.get("REMOTE_USER"), identity.get("from"), identity.get("groups"),
                 sorted(k for k in environ if k.startswith("repoze.who.")))).encode()
    if environ["PATH_INFO"] == "/private" and not environ.get("REMOTE_USER"):
        start_response("401 Unauthorized", [("Content-Length", str(len(body)))])
    else:
        start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def writing_app(environ: dict, start_response: Any) -> list[bytes]:
    """Writes part of its body through ``write`` (legacy WSGI)."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written;")
    return [b"returned"]


def late_app(environ: dict, start_response: Any) -> Any:
    """Starts its response only at its first iteration."""
    start_response("401 Unauthorized" if environ["PATH_INFO"] == "/private" else "200 OK",
                    [("Content-Type", "text/plain")])
    yield b"late"


def plugins(classified: bool = False, replace_app: bool = False, single: bool = False
            ) -> dict[str, list]:
    """Two identifiers and two authenticators (ranked), or with ``single`` one of each (the
    usual stack, which takes a path of its own)."""
    one = HeaderIdentifier("one", replace_app=replace_app)
    two = HeaderIdentifier("two", {IIdentifier: ["dav"]} if classified else None)
    first = PrefixAuthenticator("first", "a")
    second = PrefixAuthenticator("second", "",
                                 {IAuthenticator: ["browser"]} if classified else None)
    if single:
        return {
            "identifiers": [("one", one)],
            "authenticators": [("second", second)],
            "challengers": [("one", one)],
            "mdproviders": [("groups", Groups())],
        }
    return {
        "identifiers": [("one", one), ("two", two)],
        "authenticators": [("first", first), ("second", second)],
        "challengers": [("one", one), ("two", two)],
        "mdproviders": [("groups", Groups())],
    }


def stock(app: Any, **kw: Any) -> Any:
    return PluggableAuthenticationMiddleware(
        app, **kw, request_classifier=default_request_classifier,
        challenge_decider=default_challenge_decider)


def ours(app: Any, **kw: Any) -> Any:
    return AuthMiddleware(app, **kw)


def ours_logged(app: Any, **kw: Any) -> Any:
    return AuthMiddleware(app, **kw, log_stream=io.StringIO(), log_level=logging.DEBUG)


SCENARIOS = {
    "nobody": ("/", {}),
    "nobody, private": ("/private", {}),
    "first identifier, first authenticator": ("/", {"X-Login-One": "alice"}),
    "second authenticator only": ("/", {"X-Login-One": "bob"}),
    "two identities, the first ranks": ("/", {"X-Login-One": "bob", "X-Login-Two": "anne"}),
    "dav request": ("/", {"X-Login-Two": "anne", "User-Agent": "WebDrive"}),
    "private with a user": ("/private", {"X-Login-One": "alice"}),
    "already authenticated upstream": ("/", {"X-Login-One": "alice", "REMOTE_USER": "up"}),
}


def _run(factory: Any, app: Any, path: str, headers: dict, **options: Any
         ) -> tuple[str, list, bytes, dict]:
    kw = plugins(**options)
    request = Request.blank(path)
    for name, value in headers.items():
        if name == "REMOTE_USER":
            request.environ["REMOTE_USER"] = value
        else:
            request.headers[name] = value
    response = request.get_response(factory(app, **kw))
    calls = {name: a.calls for name, a in kw["authenticators"]}
    return response.status, sorted(response.headerlist), response.body, calls


@pytest.mark.parametrize("single", [False, True], ids=["ranked", "single"])
@pytest.mark.parametrize("classified", [False, True], ids=["any", "classified"])
@pytest.mark.parametrize("app", [seen_app, late_app], ids=["app", "late-app"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_lean_path_answers_as_stock_repoze_who(scenario, app, classified, single):
    path, headers = SCENARIOS[scenario]
    options = {"classified": classified, "single": single}
    expected = _run(stock, app, path, headers, **options)
    assert _run(ours, app, path, headers, **options) == expected
    assert _run(ours_logged, app, path, headers, **options) == expected


def test_a_single_identifier_and_authenticator_take_the_unranked_path(monkeypatch):
    """The ``single`` scenarios above are only worth something if they take that path."""
    assert ours(seen_app, **plugins(single=True)).api_factory.unclassified.pair is not None
    assert ours(seen_app, **plugins()).api_factory.unclassified.pair is None
    classified = ours(seen_app, **plugins(single=True, classified=True)).api_factory
    assert classified.unclassified is None  # a plugin restricts itself: matched per request
    assert classified.plugins_for("browser").pair is not None
    assert classified.plugins_for("dav").pair is None  # no authenticator for WebDAV
    monkeypatch.setattr(PrebuiltAPI, "_best", staticmethod(
        lambda environ, plugins: pytest.fail("ranked identities with one of each")))
    status, _, body, _ = _run(ours, seen_app, "/", {"X-Login-One": "bob"}, single=True)
    assert status == "200 OK" and b"'second:bob'" in body


@implementer(IIdentifier, IAuthenticator, IMetadataProvider)
class Scripted:
    """Identifies as ``identity``, authenticates as ``userid`` (or raises ``raises`` from
    the method so named), and writes down each call it gets."""

    def __init__(self, identity: Any = None, userid: Any = None, raises: str = "") -> None:
        self.identity, self.userid, self.raises = identity, userid, raises
        self.calls: list[tuple] = []

    def identify(self, environ: dict) -> Any:
        self.calls.append(("identify",))
        if self.raises == "identify":
            raise RuntimeError("identify")
        return dict(self.identity) if isinstance(self.identity, dict) else self.identity

    def authenticate(self, environ: dict, identity: Any) -> Any:
        self.calls.append(("authenticate", repr(identity)))
        if self.raises == "authenticate":
            raise RuntimeError("authenticate")
        return self.userid

    def add_metadata(self, environ: dict, identity: dict) -> None:
        self.calls.append(("add_metadata", sorted(identity)))

    def remember(self, environ: dict, identity: dict) -> list:
        return []

    def forget(self, environ: dict, identity: dict) -> list:
        return []


def _authenticate_once(make: Any, identifier: Scripted, authenticator: Scripted) -> tuple:
    """What one ``api.authenticate()`` returns, raises, sets and calls."""
    factory = make(seen_app, identifiers=[("i", identifier)],
                   authenticators=[("a", authenticator)], challengers=[],
                   mdproviders=[("m", authenticator)]).api_factory
    roles = {id(identifier): "the identifier", id(authenticator): "the authenticator"}

    def shown(identity: Any) -> Any:  # the plugin objects by their role in this run
        return None if identity is None else sorted(
            (name, roles.get(id(value), value)) for name, value in identity.items())

    environ = Request.blank("/").environ
    try:
        answer: Any = shown(factory(environ).authenticate())
    except RuntimeError as exc:
        answer = ("raised", str(exc))
    return (answer, environ.get("REMOTE_USER", "unset"),
            shown(environ.get("repoze.who.identity")), identifier.calls, authenticator.calls)


@pytest.mark.parametrize("shared", [False, True], ids=["two-plugins", "one-plugin-as-both"])
@pytest.mark.parametrize("raises", ["", "identify", "authenticate"])
@pytest.mark.parametrize("userid", [None, "", 0, "bob"])
@pytest.mark.parametrize("identity", [None, {}, {"login": "x"}])
def test_the_unranked_path_answers_as_stock_whatever_the_plugins_return(
        identity, userid, raises, shared):
    """Stock keeps an identity that is not None (even ``{}``) and a userid that is not None
    (even ``""`` or ``0``); what a plugin raises reaches the caller."""
    def run(make: Any) -> tuple:
        identifier = Scripted(identity, userid, raises)
        authenticator = identifier if shared else Scripted(None, userid, raises)
        return _authenticate_once(make, identifier, authenticator)

    expected = run(stock)
    assert run(ours) == expected
    assert run(ours_logged) == expected
    if identity is not None and userid is not None and not raises:
        assert expected[1] == userid  # the falsy userids are users, as on stock


def test_the_scenarios_cover_what_they_claim():
    """The comparisons above are only worth something if the stock answers differ."""
    answers = {name: _run(stock, seen_app, *SCENARIOS[name]) for name in SCENARIOS}
    assert answers["nobody, private"][0].startswith("401")
    assert ("X-Challenged-By", "one") in answers["nobody, private"][1]
    assert b"'first:alice'" in answers["first identifier, first authenticator"][2]
    assert b"'second:bob'" in answers["second authenticator only"][2]
    assert b"('first:anne', 'two'" in answers["two identities, the first ranks"][2]
    assert b"'up'" in answers["already authenticated upstream"][2]
    classified = _run(stock, seen_app, *SCENARIOS["dav request"], classified=True)
    assert classified != answers["dav request"]
    with pytest.raises(TypeError):  # stock buffers write()'s bytes in an io.StringIO
        _run(stock, writing_app, "/", {})


def test_written_body_is_passed_on_as_bytes():
    """What an app writes through ``write`` reaches the client (stock repoze.who buffers it
    in an ``io.StringIO``, which refuses bytes)."""
    status, _, body, _ = _run(ours, writing_app, "/", {"X-Login-One": "alice"})
    assert status == "200 OK"
    assert body == b"written;returned"


def test_an_identifier_may_replace_the_app():
    expected = _run(stock, seen_app, "/", {"X-Login-One": "zed"}, replace_app=True)
    assert expected[0].startswith("401")
    assert _run(ours, seen_app, "/", {"X-Login-One": "zed"}, replace_app=True) == expected


def test_no_challenger_raises_as_stock():
    request = Request.blank("/private")
    with pytest.raises(NoChallengersFound):
        request.get_response(AuthMiddleware(seen_app, [], [], [], []))


def test_the_api_object_is_in_the_environ_and_reused():
    kw = plugins()
    middleware = AuthMiddleware(seen_app, **kw)
    environ = Request.blank("/", headers={"X-Login-One": "alice"}).environ
    api = middleware.api_factory(environ)
    assert environ["repoze.who.api"] is api
    assert middleware.api_factory(environ) is api
    identity = api.authenticate()
    # Both authenticators accept alice; the first ranks. As in stock repoze.who, each
    # success stamps the shared identity, so its userid item is the last one's.
    assert environ["REMOTE_USER"] == "first:alice"
    assert identity["repoze.who.userid"] == "second:alice"
    assert identity["identifier"] is kw["identifiers"][0][1]
    assert identity["authenticator"] is kw["authenticators"][0][1]
    assert api.remember() == [("X-Remembered-By", "one")]


def test_an_api_factory_set_on_the_middleware_later_makes_the_api_objects():
    """Our own factory's API objects are made inline; another one set on the middleware (as
    stock allows) makes them instead, and an outer layer's API object is used as it is."""
    kw = plugins()
    middleware = AuthMiddleware(seen_app, **kw)
    made = []

    class CountingFactory(APIFactory):
        def __call__(self, environ: dict) -> API:
            api = super().__call__(environ)
            made.append(api)
            return api

    middleware.api_factory = CountingFactory(
        kw["identifiers"], kw["authenticators"], kw["challengers"], kw["mdproviders"],
        default_request_classifier, default_challenge_decider)
    response = Request.blank("/", headers={"X-Login-One": "alice"}).get_response(middleware)
    assert response.status == "200 OK" and b"first:alice" in response.body
    assert len(made) == 1 and type(made[0]) is API
    # An API object already in the environ (an outer layer's) is the request's.
    request = Request.blank("/", headers={"X-Login-One": "alice"})
    other = plugins()
    outer = API(request.environ, other["identifiers"], other["authenticators"],
                other["challengers"], other["mdproviders"], default_request_classifier,
                default_challenge_decider, "REMOTE_USER", None)
    request.environ["repoze.who.api"] = outer
    response = request.get_response(AuthMiddleware(seen_app, **plugins()))
    assert request.environ["repoze.who.api"] is outer
    assert response.status == "200 OK" and b"first:alice" in response.body


def test_unhashable_and_many_classifications_are_matched_each_time():
    kw = plugins(classified=True)

    def classify(environ: dict) -> Any:
        kind = environ.get("HTTP_X_KIND", "browser")
        return [kind] if kind == "list" else kind

    middleware = AuthMiddleware(seen_app, **kw, request_classifier=classify)
    for kind in ["list", *[f"k{i}" for i in range(100)], "browser"]:
        request = Request.blank("/", headers={"X-Login-One": "bob", "X-Kind": kind})
        response = request.get_response(middleware)
        # "second" takes part in browser requests only: bob is nobody elsewhere.
        assert (b"'second:bob'" in response.body) == (kind == "browser"), kind


def test_remembered_default_classification_is_repoze_whos():
    middleware = AuthMiddleware(seen_app, [], [], [], [])
    classify = middleware.api_factory.classify
    environs = [
        {"REQUEST_METHOD": method, **({"HTTP_USER_AGENT": agent} if agent else {}),
         **({"CONTENT_TYPE": ctype} if ctype is not None else {})}
        for method in ("GET", "POST", "PROPFIND", "get")
        for agent in (None, "", "Mozilla/5.0", "Microsoft-WebDAV-MiniRedir/10.0", "x neon y")
        for ctype in (None, "", "text/xml; charset=utf-8", "TEXT/XML", "application/json")
    ]
    environs += [{"REQUEST_METHOD": "GET", "HTTP_USER_AGENT": f"agent {i}"} for i in range(1500)]
    for _ in range(2):  # the second time, from the memo (as far as it goes)
        for environ in environs:
            assert classify(environ) == default_request_classifier(environ), environ
    assert {classify(e) for e in environs} == {"browser", "dav", "xmlpost"}
    with pytest.raises(KeyError):  # as repoze.who's: a WSGI environ has REQUEST_METHOD
        classify({})


def test_remembered_classifications_hold_little_memory_whatever_the_user_agents():
    """User-Agent is the client's to choose, as long as the server takes (waitress: 256 KB
    of headers). The memo counts its entries; what they hold must be bounded too."""
    classify = AuthMiddleware(seen_app, [], [], [], []).api_factory.classify
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1100):
            agent = f"{i:06d}" + "x" * 65536
            assert classify({"REQUEST_METHOD": "GET", "HTTP_USER_AGENT": agent}) == "browser"
            del agent
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4 * 1024 * 1024, f"{held} bytes kept for 1100 requests"


def test_form_posts_from_one_browser_are_classified_once(monkeypatch):
    """A form post's Content-Type holds a boundary made up for the request; the classifier
    reads only whether it starts with text/xml. Remembered by the whole header, every post
    took an entry of its own and the memo filled with answers no request would ask for
    again (after which no new browser was remembered)."""
    classify = AuthMiddleware(seen_app, [], [], [], []).api_factory.classify
    calls = []

    def counting(environ: dict) -> str:
        calls.append(environ.get("CONTENT_TYPE"))
        return default_request_classifier(environ)

    monkeypatch.setattr(middleware_module, "default_request_classifier", counting)
    agent = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
    for i in range(1100):
        environ = {"REQUEST_METHOD": "POST", "HTTP_USER_AGENT": agent,
                   "CONTENT_TYPE": f"multipart/form-data; boundary=----{i:020d}"}
        assert classify(environ) == "browser"
    assert classify({"REQUEST_METHOD": "POST", "HTTP_USER_AGENT": agent,
                     "CONTENT_TYPE": "text/xml; charset=utf-8"}) == "xmlpost"
    assert len(calls) == 2, f"{len(calls)} classifications for two kinds of request"


def test_the_api_objects_settings_can_be_set_as_on_stock_repoze_who():
    """Stock ``API`` keeps its settings as plain attributes: code holding the request's API
    may replace one for the request (a challenge decider, the remote-user key...)."""
    middleware = AuthMiddleware(seen_app, **plugins())
    environ = Request.blank("/").environ
    api = middleware.api_factory(environ)
    names = ("interface_registry", "identifiers", "authenticators", "challengers",
             "mdproviders", "challenge_decider", "remote_user_key")
    for name in names:
        assert getattr(api, name) is getattr(middleware.api_factory, name)
        replacement = object()
        setattr(api, name, replacement)
        assert getattr(api, name) is replacement
    other = middleware.api_factory(Request.blank("/").environ)
    assert all(getattr(other, name) is getattr(middleware.api_factory, name) for name in names)
    # A registry set by hand is the one authenticate() matches, as stock's does.
    environ = Request.blank("/", headers={"X-Login-One": "alice"}).environ
    api = middleware.api_factory(environ)
    api.interface_registry = {}
    assert api.authenticate() is None and "REMOTE_USER" not in environ
    assert middleware.api_factory(Request.blank("/", headers={"X-Login-One": "alice"}).environ
                                  ).authenticate()["repoze.who.userid"] == "second:alice"


class _RememberingAPI(API):
    """An API whose remember() is its own (a framework's subclass)."""

    def remember(self, identity: dict | None = None) -> list:
        return [("X-Remembered-By", "the api's class")]


def _api_of_an_outer_layer(app: Any, **kw: Any) -> Any:
    """A layer in front that puts its API object in the environ first: the middleware
    below uses that one (repoze.who's ``APIFactory`` takes ``repoze.who.api`` as it is)."""
    def layer(environ: dict, start_response: Any) -> Any:
        environ["repoze.who.api"] = _RememberingAPI(
            environ, kw["identifiers"], kw["authenticators"], kw["challengers"],
            kw["mdproviders"], default_request_classifier, default_challenge_decider,
            "REMOTE_USER", None)
        return app(environ, start_response)
    return layer


def _app_replacing_remember(environ: dict, start_response: Any) -> list[bytes]:
    """Code holding the request's API replaces its remember() for the request."""
    environ["repoze.who.api"].remember = lambda identity=None: [("X-Remembered-By", "app")]
    return seen_app(environ, start_response)


@pytest.mark.parametrize("how", ["outer layer's API class", "set on the API by the app"])
def test_remember_is_the_apis_own_as_on_stock_repoze_who(how):
    """Stock middleware asks ``api.remember()`` for the response's headers, so an API of
    another class, or one whose remember() the app replaced, has its own say."""
    def run(factory: Any) -> tuple[str, list, bytes]:
        kw = plugins()
        request = Request.blank("/", headers={"X-Login-One": "alice"})
        if how == "outer layer's API class":
            served = _api_of_an_outer_layer(factory(seen_app, **kw), **kw)
        else:
            served = factory(_app_replacing_remember, **kw)
        response = request.get_response(served)
        return response.status, sorted(response.headerlist), response.body

    expected = run(stock)
    assert ("X-Remembered-By", "one") not in expected[1]  # the scenario is worth running
    assert run(ours) == expected
    assert run(ours_logged) == expected


def _method_overriding_app(environ: dict, start_response: Any) -> list[bytes]:
    """An app behind a method override (Routes' ``_method``, X-HTTP-Method-Override): the
    environ's method is changed before the app asks how repoze.who classified the request."""
    environ["REQUEST_METHOD"] = "PUT"
    environ["CONTENT_TYPE"] = "application/json"
    body = repr(environ["repoze.who.api"].classification).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def test_the_classification_is_the_requests_as_it_came_as_on_stock_repoze_who():
    """Stock ``API`` classifies the request when it is made: what the app sees is what the
    classifier said of the request as it came in, whatever the environ became since."""
    def run(factory: Any) -> bytes:
        request = Request.blank("/", method="POST", content_type="text/xml", body=b"<x/>")
        return request.get_response(factory(_method_overriding_app, **plugins())).body

    assert run(stock) == b"'xmlpost'"
    assert run(ours) == b"'xmlpost'"
    assert run(ours_logged) == b"'xmlpost'"


@pytest.mark.parametrize("setting", ["identifiers", "request_classifier"])
def test_settings_set_on_the_factory_later_take_effect_as_on_stock_repoze_who(setting):
    """Stock ``APIFactory`` hands each API object its settings as they are now: plugins or a
    classifier set on it after start-up are the next request's (tests and apps do)."""
    def run(factory: Any) -> bytes:
        middleware = factory(seen_app, **plugins(classified=True))
        if setting == "identifiers":
            middleware.api_factory.identifiers = [("three", HeaderIdentifier("three"))]
            headers = {"X-Login-Three": "bob"}
        else:  # every request a WebDAV one: "second" (browser only) no longer takes part
            middleware.api_factory.request_classifier = lambda environ: "dav"
            headers = {"X-Login-One": "bob"}
        return Request.blank("/", headers=headers).get_response(middleware).body

    expected = run(stock)
    assert expected.startswith(b"(None," if setting == "request_classifier" else b"('second:bob'")
    assert run(ours) == expected


def _api_recording_app(refs: list) -> Any:
    def app(environ: dict, start_response: Any) -> list[bytes]:
        refs.append(weakref.ref(environ["repoze.who.api"]))
        return seen_app(environ, start_response)
    return app


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/", 200), ("HEAD", "/", 200), ("GET", "/private", 401),
], ids=["served", "head", "challenged"])
def test_a_served_requests_api_object_is_freed_when_it_ends(method, path, status):
    """Through a real waitress server, with the cyclic garbage collector off: the server's
    close() of a list body takes the API object out of the environ, so reference counting
    frees it (stock repoze.who leaves an environ <-> API cycle for the collector)."""
    refs: list = []
    gc.disable()
    try:
        with serving(AuthMiddleware(_api_recording_app(refs), **plugins()), threads=1) as port:
            for login in ("alice", None):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request(method, path,
                                   headers={"X-Login-One": login} if login else {})
                response = connection.getresponse()
                response.read()
                connection.close()
                expected = 200 if login else status
                assert response.status == expected
                for _ in range(500):  # the server closes the body after sending it
                    if refs[-1]() is None:
                        break
                    time.sleep(0.01)
                assert refs[-1]() is None, (
                    f"{method} {path} as {login}: the API object lives on")
    finally:
        gc.enable()

"""repoze.who's middleware and API, with everything that can be done once done at load time.

Stock repoze.who does on every request what depends only on its configuration: it verifies
every plugin's interfaces (``make_registries``: about 70% of its per-request overhead), and
it matches every plugin against the request's classification three times (identifiers,
authenticators, metadata providers). Ours does both when the middleware is built (the
plugin lists of each classification are kept the first time a request of it comes), and
runs the request with no other change of behaviour: the same environ keys (the API object
in ``repoze.who.api``, ``repoze.who.identity``, ``REMOTE_USER``...), the same ranking of
identities, the same challenge and remember steps, so that plugins, frameworks and apps
written against repoze.who see what they always see.

With a logger (``log_stream``), the stock code runs unchanged, so its log is repoze.who's
own, line for line. Without one (the usual case), a leaner equivalent runs: no log
formatting, no per-request ``io.StringIO``, no re-matching, no copying of settings, and no
reference cycle left behind (stock repoze.who's environ and API object hold each other, so
every request's objects wait for the cyclic garbage collector; see :class:`_ReleasingBody`).
Over HTTP (``make bench``), the stock path costs about as much again as our cache's
near-cache hit itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from repoze.who.api import API, APIFactory, Identity, make_registries, match_classification
from repoze.who.classifiers import default_challenge_decider, default_request_classifier
from repoze.who.interfaces import IAuthenticator, IIdentifier, IMetadataProvider
from repoze.who.middleware import (
    NoChallengersFound,
    PluggableAuthenticationMiddleware,
    wrap_generator,
)

from .errors import ConfigError
from .memos import remember

_MAX_USER_AGENTS = 1024
"""Classifications remembered by (method, User-Agent, text/xml or not) (see below)."""
_MAX_REMEMBERED_AGENT_CHARS = 512
"""Longer User-Agents are classified afresh: the memo's memory stays small (real browsers
send 100 to 300 characters; a client may send what the server's header limit lets it)."""
_MAX_CLASSIFICATIONS = 64
"""Plugin lists kept for this many classifications (a custom classifier could make up
any number of them; past this, each request matches its plugins itself)."""


class PluginsFor(NamedTuple):
    """The plugins that take part in a request of one classification, in their order."""

    identifiers: list[Any]
    authenticators: list[Any]
    mdproviders: list[Any]
    pair: tuple[Any, Any] | None
    """(identifier, authenticator) when there is exactly one of each (the usual stack): a
    request then needs none of the ranking of identities."""


class PrebuiltAPIFactory(APIFactory):
    """An ``APIFactory`` whose plugin registries are built and verified once, at load time.

    Stock ``API.__init__`` calls ``make_registries`` (``verifyObject`` on every plugin) for
    each request; ours hands every request the registries made here.
    """

    def __init__(self, identifiers, authenticators, challengers, mdproviders,
                 request_classifier, challenge_decider, remote_user_key="REMOTE_USER",
                 logger=None) -> None:
        super().__init__(identifiers, authenticators, challengers, mdproviders,
                         request_classifier, challenge_decider, remote_user_key, logger)
        self._prepare()

    def _prepare(self) -> None:
        """Build what every request uses from the plugins and the classifier: at start-up,
        and again when one of them is set on the factory (see :meth:`__setattr__`)."""
        try:
            self.interface_registry, self.name_registry = make_registries(
                self.identifiers, self.authenticators, self.challengers, self.mdproviders
            )
        except ValueError as exc:
            raise ConfigError(f"a plugin does not implement its interface: {exc}") from None
        self._plugins_by_classification: dict[Any, PluginsFor] = {}
        self.unclassified: PluginsFor | None = None
        """The plugin lists of every request, when no plugin restricts itself to some
        classifications (the usual case): no matching at all per request."""
        every = (*self.identifiers, *self.authenticators, *self.challengers, *self.mdproviders)
        if not any(getattr(plugin, "classifications", None) for _, plugin in every):
            self.unclassified = self.plugins_for(None)
        request_classifier = self.request_classifier
        self.classify: Callable[[dict], Any] = (
            _remembering_default_classifier() if request_classifier is default_request_classifier
            else request_classifier or _no_classification)
        if "api_class" in self.__dict__:
            return  # its settings were set as they changed
        # The request's API object is of a class made for this factory: the settings are
        # its class attributes (read as the factory's, replaceable per request as on stock
        # API, where they are instance attributes), so a request sets only what is its own.
        # (The classification is the request's own, made when its API object is: as on
        # stock API, it is what the classifier said of the request as it came in, even if
        # the app changes the environ before reading it, as a method override does.)
        # (Each wrapped in staticmethod: a function, such as the challenge decider, must not
        # become a method of the API object.)
        api_settings = {name: staticmethod(getattr(self, name)) for name in API_SETTINGS}
        self.api_class: type[PrebuiltAPI] = type("PrebuiltAPI", (PrebuiltAPI,), {
            "__module__": __name__, "__doc__": PrebuiltAPI.__doc__, "factory": self,
            **api_settings,
        })

    def __setattr__(self, name: str, value: Any) -> None:
        # A setting changed on the factory reaches the API objects it makes from then on, as
        # it does on stock APIFactory (which hands every API object its current settings);
        # new plugins or a new classifier are verified and matched as at start-up.
        super().__setattr__(name, value)
        api_class = self.__dict__.get("api_class")
        if api_class is None:
            return  # still being built
        if name in API_SETTINGS:
            setattr(api_class, name, staticmethod(value))
        if name in _PREPARED_FROM:
            self._prepare()

    def __call__(self, environ: dict) -> API:
        api = environ.get("repoze.who.api")
        if api is None:
            api = environ["repoze.who.api"] = self.api_class(environ)
        return api

    def plugins_for(self, classification: Any) -> PluginsFor:
        """The identifiers, authenticators and metadata providers a request of this
        classification uses (repoze.who's ``match_classification``, made once)."""
        try:
            return self._plugins_by_classification[classification]
        except KeyError:
            rememberable = len(self._plugins_by_classification) < _MAX_CLASSIFICATIONS
        except TypeError:  # an unhashable classification: matched each time
            rememberable = False
        registry = self.interface_registry
        identifiers, authenticators, mdproviders = (
            match_classification(iface, registry.get(iface, ()), classification)
            for iface in (IIdentifier, IAuthenticator, IMetadataProvider)
        )
        pair = ((identifiers[0], authenticators[0])
                if len(identifiers) == 1 and len(authenticators) == 1 else None)
        plugins = PluginsFor(identifiers, authenticators, mdproviders, pair)
        if rememberable:
            self._plugins_by_classification[classification] = plugins
        return plugins


def _no_classification(environ: dict) -> None:
    return None


def _remembering_default_classifier() -> Callable[[dict], str]:
    """repoze.who's ``default_request_classifier``, its answers remembered by what it reads.

    It is a function of the method, the User-Agent (matched against nine WebDAV agents) and,
    for a POST, whether the Content-Type starts with ``text/xml`` (its expression, repeated
    here: the header itself is no key, as a form post's holds a boundary made up for the
    request). Browsers send the same few User-Agents again and again. The memo is bounded
    (User-Agent is the client's to choose): long ones are not kept, and it is emptied when
    full, as the package's other memos are.
    """
    memo: dict[tuple[Any, Any, bool | None], str] = {}

    def classify(environ: dict) -> str:
        method = environ.get("REQUEST_METHOD")
        agent = environ.get("HTTP_USER_AGENT")
        xml = None
        if method == "POST":
            content_type = environ.get("CONTENT_TYPE", "")
            if type(content_type) is not str:
                return default_request_classifier(environ)
            xml = content_type.lower().startswith("text/xml")
        what = (method, agent, xml)
        try:
            return memo[what]
        except KeyError:
            pass
        except TypeError:  # a value that is not hashable: not for the memo
            return default_request_classifier(environ)
        classification = default_request_classifier(environ)
        if type(agent) is str and len(agent) > _MAX_REMEMBERED_AGENT_CHARS:
            return classification
        remember(memo, what, classification, _MAX_USER_AGENTS)
        return classification

    return classify


API_SETTINGS = ("interface_registry", "name_registry", "identifiers", "authenticators",
                "challengers", "mdproviders", "challenge_decider", "remote_user_key", "logger")
"""What stock ``API.__init__`` stores from its factory's configuration."""
_PREPARED_FROM = frozenset({"identifiers", "authenticators", "challengers", "mdproviders",
                            "request_classifier"})
"""The factory's settings that :meth:`PrebuiltAPIFactory._prepare` builds from."""


def _copy_registry(registry: Any) -> dict:
    """The request's own copy of the name registry (``dict.copy`` is the cheap way for the
    usual dict; a mapping set on the factory by hand is copied as stock copies it)."""
    return registry.copy() if type(registry) is dict else dict(registry)


class PrebuiltAPI(API):
    """repoze.who's API object over a :class:`PrebuiltAPIFactory`'s registries.

    Every public method is repoze.who's, and behaves as it does; :meth:`authenticate` runs
    over the plugin lists matched at load time when no logger is set. Made by a factory's
    ``api_class`` (``factory(environ)``), whose class attributes are its settings.
    """

    factory: PrebuiltAPIFactory

    def __init__(self, environ: dict) -> None:
        # repoze.who's API.__init__ minus the per-request verification and the copying of
        # settings (class attributes here). The name registry is the request's own copy, as
        # stock's is: the app may change it.
        self.environ = environ
        self.name_registry = _copy_registry(self.name_registry)
        self.classification = self.factory.classify(environ)
        if self.logger:
            self.logger.info(f"request classification: {self.classification}")

    def authenticate(self) -> Identity | None:
        """See repoze.who's ``IAPI.authenticate``: every identity any identifier finds, tried
        with every authenticator; the best (authenticator first, then identifier, in their
        configured order) gets the metadata and is the request's identity."""
        factory = self.factory
        if self.logger or self.interface_registry is not factory.interface_registry:
            return super().authenticate()  # logged, or a registry set by hand
        environ = self.environ
        plugins = factory.unclassified or factory.plugins_for(self.classification)
        if plugins.pair is not None:  # one identifier, one authenticator: nothing to rank
            identifier, authenticator = plugins.pair
            identity = identifier.identify(environ)
            if identity is None:
                return None
            userid = authenticator.authenticate(environ, identity)
            if userid is None:
                return None
            identity["repoze.who.userid"] = userid
        else:
            best = self._best(environ, plugins)
            if best is None:
                return None
            authenticator, identifier, identity, userid = best
        identity = Identity(identity)
        identity["authenticator"] = authenticator
        identity["identifier"] = identifier
        for mdprovider in plugins.mdproviders:
            mdprovider.add_metadata(environ, identity)
        environ["repoze.who.identity"] = identity
        environ[self.remote_user_key] = userid
        return identity

    @staticmethod
    def _best(environ: dict, plugins: PluginsFor) -> tuple[Any, Any, dict, Any] | None:
        """(authenticator, identifier, identity, userid) of the best identity: every identity
        any identifier finds, tried with every authenticator, in rank order, so the first
        success is the one stock repoze.who's sort of (rank, ...) tuples puts first."""
        found = []
        for identifier in plugins.identifiers:
            identity = identifier.identify(environ)
            if identity is not None:
                found.append((identifier, identity))
        best = None
        for authenticator in plugins.authenticators:
            for identifier, identity in found:
                userid = authenticator.authenticate(environ, identity)
                if userid is not None:
                    identity["repoze.who.userid"] = userid
                    if best is None:
                        best = (authenticator, identifier, identity, userid)
        return best


class _ReleasingBody(list):
    """A response body that was a list, which at ``close()`` (PEP 3333: the server calls it
    when the request is done) takes this request's API object out of the environ.

    The API object holds the environ (``api.environ``) and the environ the API object: a
    reference cycle, which stock repoze.who leaves for the cyclic garbage collector, with
    everything the environ holds. Under load that is a collection every hundred requests or
    so, and now and then a full one, which walks every object of the process (the caches'
    memos among them): it cost our near-cache hits about a fifth of their time over HTTP.
    Broken at close(), each request's objects are freed by reference counting as it ends.
    """

    __slots__ = ("environ",)
    environ: dict

    def close(self) -> None:
        self.environ.pop("repoze.who.api", None)


def _releasing(app_iter: Any, environ: dict) -> Any:
    """``app_iter`` as a :class:`_ReleasingBody` if it is a list, else as it is (an iterable
    of another kind keeps the cycle, as on stock repoze.who)."""
    if type(app_iter) is not list:
        return app_iter
    body = _ReleasingBody(app_iter)
    body.environ = environ
    return body


class AuthMiddleware(PluggableAuthenticationMiddleware):
    """repoze.who's middleware with registries prebuilt (see :class:`PrebuiltAPIFactory`)
    and, without a logger, the lean request path of this module's docstring."""

    def __init__(self, app, identifiers, authenticators, challengers, mdproviders,
                 request_classifier=None, challenge_decider=None, log_stream=None,
                 log_level=logging.INFO, remote_user_key="REMOTE_USER",
                 cache_plugins: Iterable[Any] = ()) -> None:
        request_classifier = request_classifier or default_request_classifier
        challenge_decider = challenge_decider or default_challenge_decider
        super().__init__(app, identifiers, authenticators, challengers, mdproviders,
                         request_classifier, challenge_decider, log_stream, log_level,
                         remote_user_key)
        self.api_factory = PrebuiltAPIFactory(
            identifiers, authenticators, challengers, mdproviders, request_classifier,
            challenge_decider, remote_user_key, self.logger,
        )
        self.prebuilt_factory = self.api_factory
        """The factory made here: its API objects are made inline (see ``__call__``)."""
        self.lean_api_class = self.api_factory.api_class
        """API objects of this class, with no remember() of their own, remember inline."""
        self.cache_plugins = list(cache_plugins)  # our caches inside (for the CLI, benchmarks)

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.logger:
            return super().__call__(environ, start_response)
        if self.remote_user_key in environ:
            return self.app(environ, start_response)  # already authenticated upstream
        api = environ.get("repoze.who.api")
        made_here = api is None  # else an outer layer's: not ours to drop
        if made_here:
            factory = self.api_factory
            if factory is self.prebuilt_factory:
                # Its __call__, inline: calling an instance costs a slot lookup and a tuple.
                api = environ["repoze.who.api"] = self.lean_api_class(environ)
            else:  # a factory set on the middleware later, as stock allows
                api = factory(environ)
        environ["repoze.who.plugins"] = api.name_registry
        environ["repoze.who.logger"] = None
        environ["repoze.who.application"] = self.app
        api.authenticate()
        # An identifier may replace the downstream app (to redirect, or answer 401 itself).
        app = environ.pop("repoze.who.application")

        # The app's start_response is held until we know whether to challenge (repoze.who's
        # StartResponseWrapper, as a closure and without its per-request io.StringIO: what
        # the app writes through ``write`` is bytes, and is passed on as such).
        started: tuple[str, list[tuple[str, str]], Any] | None = None
        written: list[bytes] = []

        def hold_response(status: str, headers: list[tuple[str, str]],
                          exc_info: Any = None) -> Callable[[bytes], None]:
            nonlocal started
            started = (status, headers, exc_info)
            return written.append

        app_iter = app(environ, hold_response)
        if started is None:  # the app starts its response at its first iteration
            app_iter = wrap_generator(app_iter)
        status, headers, exc_info = started  # type: ignore[misc]
        decider = api.challenge_decider
        if not (status.startswith("401 ") if decider is default_challenge_decider
                else decider(environ, status, headers)):
            if type(api) is self.lean_api_class and "remember" not in api.__dict__:
                # API.remember(), without its logging (no logger here)
                identity = environ.get("repoze.who.identity")
                identifier = identity.get("identifier") if identity else None
                extra = identifier.remember(environ, identity) if identifier else None
            else:  # an outer layer's API, or a remember() set on it: its own, as stock
                extra = api.remember()
            write = start_response(status, headers + list(extra) if extra else headers,
                                   exc_info)
            if written and write:
                for chunk in written:
                    write(chunk)
            return _releasing(app_iter, environ) if made_here else app_iter
        close = getattr(app_iter, "close", None)
        challenge_app = api.challenge(status, headers)
        if challenge_app is None:
            if close is not None:
                close()
            raise NoChallengersFound()
        if app_iter:
            list(app_iter)  # unwind the app's response (PEP 3333: then close it)
        if close is not None:
            close()
        challenge_iter = challenge_app(environ, start_response)
        return _releasing(challenge_iter, environ) if made_here else challenge_iter

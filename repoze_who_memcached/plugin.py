"""The repoze.who plugin: a thin adapter over the cache core (``region.py``).

``CachingPlugin`` wraps an IAuthenticator and/or IMetadataProvider. What it knows, and the
region does not: which identity items key a call (``key_items``, fail-closed), which user
owns it (``login_item``, ``repoze.who.userid``), what goes back into the identity, how the
wrapped plugins are found (by name in repoze.who's registry, under every loader), and what
to tell the application (``environ["repoze_who_memcached.cache"]``). Keys, generations,
sealing, single flight, locks, stale serving, the near cache and invalidation are the
region's. ``make_plugin`` at the bottom turns ini strings into typed arguments.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from repoze.who.interfaces import IAuthenticator, IMetadataProvider
from zope.interface import implementer

from .backends import BACKENDS, PROXIES, BackendSettings, CacheBackend, ServerAddress
from .counters import Counters, RateLimitedLog, register_prometheus
from .errors import BackendUnavailable, ConfigError
from .keys import encode_value, is_encodable, plugin_fingerprint, scope_digest
from .nearcache import Answer, NearCache
from .options import Options, build_plugin, check_secret_strength, estimate_secret_bits
from .region import CacheRegion, Outcome
from .shield import LockoutShield

logger = logging.getLogger("repoze_who_memcached")

AUTHENTICATE = "authenticate"
ADD_METADATA = "add_metadata"
USERID = "repoze.who.userid"
# Entries repoze.who (or we) put into identities that say nothing about the credentials.
BOOKKEEPING_ITEMS = frozenset({"identifier", "authenticator", USERID})
ENVIRON_KEY = "repoze_who_memcached.cache"
"""``environ[ENVIRON_KEY]`` maps plugin name to ``{method: outcome}`` for this request,
outcome one of hit, negative_hit, local_hit, local_negative_hit (from the near cache), miss,
stale, error, refused (the lockout shield), uncached (the demo app shows it)."""

MIN_SECRET_BYTES = 32  # and not guessable: options.check_secret_strength
_SIMPLE_TYPES = (str, bytes, int, float, bool, type(None))


def _fingerprint_of(plugin: Any) -> bytes:
    """The wrapped plugin's :func:`plugin_fingerprint`; nothing while none is bound yet
    (a plugin named by ``authenticator_name`` is found at the first request)."""
    return plugin_fingerprint(plugin) if plugin is not None else b""


@implementer(IAuthenticator, IMetadataProvider)
class CachingPlugin:
    """Caches a wrapped authenticator's and/or metadata provider's answers in memcached.

    Build it with :func:`make_plugin` from ini options; the constructor takes typed values.
    ``authenticator`` and ``mdprovider`` are plugin objects or ``module:object`` specs;
    ``name`` defaults to the name the plugin is registered under in repoze.who (the
    ``[plugin:NAME]`` section), found on the first request when no loader of ours said it.
    """

    def __init__(
        self,
        *,
        secret: str | bytes,
        backend: CacheBackend,
        authenticator: Any = None,
        mdprovider: Any = None,
        authenticator_name: str | None = None,
        mdprovider_name: str | None = None,
        key_items: Iterable[str] | None = None,
        value_items: Iterable[str] | None = None,
        ttl: int = 60,
        negative_ttl: int = 0,
        stale_ttl: int = 0,
        lock_timeout: int = 0,
        login_item: str = "login",
        key_prefix: str = "",
        name: str | None = None,
        stats_log_interval: float = 300.0,
        local_ttl: float = 0,
        local_max_entries: int = 10_000,
        local_check_interval: float = 1.0,
        password_item: str | None = "password",  # noqa: S107 - an item's name
        max_failures: int = 0,
        failure_window: int = 300,
        refresh_ahead: float = 0.0,
        ttl_jitter: float = 0.1,
        previous_secrets: Iterable[str | bytes] = (),
    ) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        check_secret_strength(secret, "secret")
        # With neither a plugin nor a name to find one by, this plugin would silently do
        # nothing: refuse it at load time.
        if not (authenticator or mdprovider or authenticator_name or mdprovider_name):
            raise ConfigError(
                "set at least one of 'authenticator_name', 'mdprovider_name', "
                "'authenticator' or 'mdprovider' (the plugin(s) whose results are cached)"
            )
        self.key_items = tuple(key_items) if key_items else None
        if self.key_items and login_item not in self.key_items:
            # The login names the user whose entries an invalidation drops, and tells a
            # login from a cookie or REMOTE_USER identity (which are never cached).
            raise ConfigError(f"must include login_item ({login_item!r}), the item that "
                              "names the user; or set login_item", option="key_items")
        self.name = name or "cache"
        self.name_is_fixed = name is not None  # else taken from repoze.who's registry
        self.counters = Counters(self.name, logger, stats_log_interval)
        near = (NearCache(local_ttl, local_max_entries, local_check_interval,
                          (AUTHENTICATE, ADD_METADATA)) if local_ttl else None)
        self.region = CacheRegion(
            secret=secret, backend=backend, counters=self.counters, ttl=ttl,
            negative_ttl=negative_ttl, stale_ttl=stale_ttl, lock_timeout=lock_timeout,
            key_prefix=key_prefix, near=near, ttl_jitter=ttl_jitter,
            refresh_ahead=refresh_ahead,
            previous_secrets=[p.encode("utf-8") if isinstance(p, str) else p
                              for p in previous_secrets],
        )
        self.password_item = password_item or None
        self._pair_item: Any = (password_item if password_item and password_item != login_item
                                else object())
        """The item beside the login in an identity the near cache keys as a pair: the
        password item, if it is another (else a key no identity has)."""
        self.shield = (LockoutShield(self.region.keys, backend, self.counters, max_failures,
                                     failure_window) if max_failures else None)
        self.region.epoch_checked = self._refresh_debug_flag
        # Before the plugins are set: their entry keys' scope depends on it (_scope).
        self.value_items = tuple(value_items) if value_items else None
        self._entry_heads: dict[str, bytes] = {}
        self.authenticator = _as_plugin(authenticator, IAuthenticator, "authenticator")
        self.mdprovider = _as_plugin(mdprovider, IMetadataProvider, "mdprovider")
        self.authenticator_name = authenticator_name
        self.mdprovider_name = mdprovider_name
        self.login_item = login_item
        self._near = near
        self._local_hits = self.counters.counter("local_hits")  # counted without a call
        self._debug_logging = logger.isEnabledFor(logging.DEBUG)
        self._warn = RateLimitedLog(logger)

    def __repr__(self) -> str:
        return f"<CachingPlugin {self.name!r} at {id(self):#x}>"

    # Settings live in the region; these read them where the CLI and tests look.
    ttl = property(lambda self: self.region.ttl)
    negative_ttl = property(lambda self: self.region.negative_ttl)
    stale_ttl = property(lambda self: self.region.stale_ttl)
    lock_timeout = property(lambda self: self.region.lock_timeout)

    @property
    def backend(self) -> CacheBackend:
        """The memcached client the region uses (benchmarks swap it for a recording one)."""
        return self.region.backend

    @backend.setter
    def backend(self, backend: CacheBackend) -> None:
        self.region.backend = backend

    # The wrapped plugins are properties: setting one binds the cache's entry keys to it
    # (keys.plugin_fingerprint), once, instead of on every request.

    @property
    def authenticator(self) -> Any:
        return self._authenticator

    @authenticator.setter
    def authenticator(self, plugin: Any) -> None:
        self._authenticator = plugin
        fingerprint = _fingerprint_of(plugin)
        if self.shield is not None:
            self.shield.scope = scope_digest(fingerprint) if fingerprint else b""
        self._entry_heads[AUTHENTICATE] = self.region.keys.entry_head(
            AUTHENTICATE, self._scope(fingerprint, self.key_items))

    @property
    def mdprovider(self) -> Any:
        return self._mdprovider

    @mdprovider.setter
    def mdprovider(self, plugin: Any) -> None:
        self._mdprovider = plugin
        self._entry_heads[ADD_METADATA] = self.region.keys.entry_head(
            ADD_METADATA, self._scope(_fingerprint_of(plugin)))

    def _scope(self, fingerprint: bytes, key_items: tuple[str, ...] | None = None) -> bytes:
        """What an entry's answer depends on besides its items: the wrapped plugin (its
        ``fingerprint``); which of its values are kept (``value_items``: an entry that kept
        only some must not answer a cache that keeps them all; their order and repeats
        change nothing); and for authentication, ``key_items``: keyed on these items only,
        a missing one as None, such entries are not for a cache that keys on every item (it
        tells ``{"login": x}`` from ``{"login": x, "password": None}``), nor on others."""
        out = [fingerprint]
        if self.value_items is not None:
            out.append(b"value_items\0")
            encode_value(sorted(set(self.value_items)), out)
        if key_items is not None:
            out.append(b"key_items\0")
            encode_value(list(key_items), out)
        return b"".join(out)

    def settings_summary(self) -> str:
        """The settings that decide what is served, for ``check``: one line, no secrets."""
        region = self.region
        parts = [
            f"ttl={region.ttl}s", f"negative_ttl={region.negative_ttl}s",
            f"stale_ttl={region.stale_ttl}s", f"lock_timeout={region.lock_timeout}s",
            f"ttl_jitter={region.ttl_jitter:g}",
            f"refresh_ahead={region.refresh_window / region.ttl if region.ttl else 0:g}",
            f"password_item={self.password_item or 'off'}",
            f"max_failures={self.shield.max_failures if self.shield else 0}",
        ]
        if self.shield:
            parts.append(f"failure_window={self.shield.failure_window}s")
        if self._near is not None:
            parts.append(f"local_ttl={self._near.ttl:g}s")
        parts.append(f"previous_secrets={len(region.previous)}")
        parts.append(f"client={type(self.backend).__name__}")
        return " ".join(parts)

    def take_name(self, name: str) -> None:
        """Be known as ``name`` (logs, counters, Prometheus, the environ), unless a name
        was given: loaders call it with the plugin's section name."""
        if not self.name_is_fixed:
            self.name = self.counters.name = name
            self.name_is_fixed = True

    # ---------------------------------------------------------------- wiring (load time)

    def bind(self, plugins: Mapping[str, Any]) -> None:
        """Resolve ``authenticator_name``/``mdprovider_name`` against a config's plugins.

        Our loaders call this right after parsing, so a wrong name fails at load time. With
        a stock repoze.who loader the names are resolved on the first request instead.
        """
        for attr, name, iface in (
            ("authenticator", self.authenticator_name, IAuthenticator),
            ("mdprovider", self.mdprovider_name, IMetadataProvider),
        ):
            if name and getattr(self, attr) is None:
                if name not in plugins:
                    raise ConfigError(
                        f"no plugin named {name!r} "
                        f"(known: {', '.join(sorted(plugins)) or 'none'})", option=f"{attr}_name"
                    )
                plugin = plugins[name]
                if not iface.providedBy(plugin):
                    raise ConfigError(f"{name!r} does not provide {iface.__name__}",
                                      option=f"{attr}_name")
                setattr(self, attr, plugin)

    def _wrapped(self, environ: dict, attr: str) -> Any:
        """The plugin named by ``authenticator_name``/``mdprovider_name``, found in the
        request's repoze.who registry: the stock middleware's ``environ["repoze.who.plugins"]``
        or the API object's ``name_registry`` (``environ["repoze.who.api"]``, set by every
        ``APIFactory``: ``make_api_factory_with_config``, frameworks). Bound once found."""
        plugin = getattr(self, attr)
        if plugin is None:
            name = getattr(self, attr + "_name")
            if not name:
                return None
            registry = _registry(environ)
            plugin = registry.get(name)
            if plugin is None:
                self._warn.warning(
                    "unbound-" + attr, "cache %s: no plugin named %r to wrap as %s; list it in "
                    "the config (e.g. '%s;unused')", self.name, name, attr, name,
                )
                return None
            iface = IAuthenticator if attr == "authenticator" else IMetadataProvider
            if not iface.providedBy(plugin):
                self._warn.warning(
                    "unbound-" + attr, "cache %s: plugin %r does not provide %s; not wrapping "
                    "it", self.name, name, iface.__name__,
                )
                return None
            if not self.name_is_fixed:
                for registered, candidate in registry.items():
                    if candidate is self:
                        self.take_name(registered)
                        break
            setattr(self, attr, plugin)
        return plugin

    # ---------------------------------------------------------------- IAuthenticator

    def authenticate(self, environ: dict, identity: dict) -> Any:
        wrapped = self._authenticator or self._wrapped(environ, "authenticator")
        if wrapped is None:
            return None
        login = identity.get(self.login_item)
        if login is None:
            # Not a login (an auth_tkt cookie, a REMOTE_USER identity): nothing to cache,
            # and no miss or denial to count; the wrapped plugin says what it makes of it.
            self._record(environ, AUTHENTICATE, "uncached")
            return self._call_backend(wrapped.authenticate, environ, identity).userid
        try:
            near_key = None
            if self._near is not None:
                # Keyed on the identity's items as they come (no sorting, no type checks:
                # marshal refuses what it can't encode): at worst a finer key than the
                # entry's, never a coarser one. The usual identity, a plain dict of exactly
                # a login and a password, is encoded as the pair (a tuple: no other
                # identity's near items are one); another plain dict as the dict it is; a
                # subclass or another mapping (marshal refuses them) by its items.
                if self.key_items is not None:
                    near_items: Any = [(n, identity.get(n)) for n in self.key_items]
                elif (type(identity) is dict and len(identity) == 2
                      and self._pair_item in identity):
                    near_items = (login, identity[self._pair_item])
                elif type(identity) is dict and BOOKKEEPING_ITEMS.isdisjoint(identity):
                    near_items = identity
                else:
                    near_items = [(n, v) for n, v in identity.items()
                                  if n not in BOOKKEEPING_ITEMS]
                near_key, answer = self._near.lookup(AUTHENTICATE, near_items)
                if answer is not None:
                    return self._restore_near(environ, identity, AUTHENTICATE, answer)
            items = self._authenticate_items(identity)
            if items is not None:
                credential = identity.get(self.password_item) if self.password_item else None
                return self._cached_call(environ, identity, AUTHENTICATE, wrapped.authenticate,
                                         items, ("login", login),
                                         near_key, credential)
        except Exception:  # a bug of ours must not become a 500: answer uncached
            logger.exception("cache %s: internal error; asking the backend directly", self.name)
            return self._call_backend(wrapped.authenticate, environ, identity).userid
        self._record(environ, AUTHENTICATE, "uncached")
        # Uncached, but still a login: the lockout shield counts it like any other.
        outcome = self._call_wrapped(AUTHENTICATE, wrapped.authenticate, environ, identity)
        return outcome.userid

    # ---------------------------------------------------------------- IMetadataProvider

    def add_metadata(self, environ: dict, identity: dict) -> None:
        wrapped = self.mdprovider or self._wrapped(environ, "mdprovider")
        if wrapped is None:
            return
        userid = identity.get(USERID)
        items = [(USERID, userid)]
        if self.key_items:
            items += [(name, identity.get(name)) for name in self.key_items]
        if userid is None or not is_encodable(items):
            self._record(environ, ADD_METADATA, "uncached")
            self._call_backend(wrapped.add_metadata, environ, identity)
            return
        try:
            near_key = None
            if self._near is not None:
                near_key, answer = self._near.lookup(ADD_METADATA, items)
                if answer is not None:
                    self._restore_near(environ, identity, ADD_METADATA, answer)
                    return
            self._cached_call(environ, identity, ADD_METADATA, wrapped.add_metadata, items,
                              ("userid", userid), near_key)
        except Exception:
            logger.exception("cache %s: internal error; asking the backend directly", self.name)
            self._call_backend(wrapped.add_metadata, environ, identity)

    # ---------------------------------------------------------------- the shared path

    def _authenticate_items(self, identity: dict) -> list[tuple[str, Any]] | None:
        """(name, value) pairs that key an authentication, or None if they can't be encoded.

        Fails closed: an item the key cannot encode (an object, a UUID, a non-str name, a
        list nested too deep) makes the call uncached. Leaving it out of the key instead
        would let any value of it, or none, reuse another's cached success.
        """
        if not self.key_items:
            # Default: every item but repoze.who's bookkeeping (plugin objects), sorted.
            items = []
            for name, value in identity.items():
                if name in BOOKKEEPING_ITEMS:
                    continue
                if type(name) is not str or not (
                    isinstance(value, _SIMPLE_TYPES) or is_encodable(value)
                ):
                    return None
                items.append((name, value))
            items.sort()  # names are unique: values are never compared
            return items
        items = [(name, identity.get(name)) for name in self.key_items]
        return items if is_encodable(items) else None

    def _cached_call(self, environ: dict, identity: dict, method: str, call: Any,
                     items: list[tuple[str, Any]], user: tuple[str, Any],
                     near_key: bytes | None = None, credential: Any = None) -> Any:
        outcome, userid, values = self.region.get_or_create(
            self._entry_heads[method], items, user, near_key,
            self._call_wrapped, method, call, environ, identity, credential=credential,
        )
        self._record(environ, method, outcome)
        if values:
            identity.update(values)
        return userid

    def _call_wrapped(self, method: str, call: Any, environ: dict, identity: dict) -> Outcome:
        """The region's ``create``: ask the wrapped plugin; what it added to the identity
        is the answer's values. Logins pass the lockout shield first (``max_failures``)."""
        shield_key = route = None
        if self.shield is not None and method == AUTHENTICATE:
            login = identity.get(self.login_item)
            route = self.region.route_for(("login", login))
            if route is not None:
                shield_key = self.shield.admit(login, route)
                if shield_key is None:
                    return Outcome(refused=True)
        before = dict(identity)
        outcome = self._call_backend(call, environ, identity)
        if shield_key is not None and route is not None:
            self.shield.answered(shield_key, route,
                                 None if outcome.failed else outcome.userid is not None)
        if not outcome.failed:
            outcome.values = self._added_values(before, identity)
            outcome.positive = method == ADD_METADATA or outcome.userid is not None
        return outcome

    def _call_backend(self, call: Any, environ: dict, identity: dict) -> Outcome:
        """Call the wrapped plugin; an exception becomes a logged failure, never a 500."""
        self.counters.incr("backend_calls")
        try:
            return Outcome(userid=call(environ, identity))
        except BackendUnavailable as exc:
            self.counters.incr("backend_errors")
            self._warn.warning("backend-unavailable", "cache %s: backend unavailable: %s",
                               self.name, exc)
        except Exception:
            self.counters.incr("backend_errors")
            logger.exception("cache %s: the wrapped plugin raised; answering None", self.name)
        return Outcome(failed=True)

    def _added_values(self, before: dict, identity: dict) -> dict[str, Any]:
        if self.value_items is not None:
            return {k: identity[k] for k in self.value_items if k in identity}
        return {
            k: v
            for k, v in identity.items()
            if k not in BOOKKEEPING_ITEMS and (k not in before or before[k] is not v)
        }

    def _restore_near(self, environ: dict, identity: dict, method: str, answer: Answer) -> Any:
        userid, values, positive = answer
        next(self._local_hits)
        outcome = "local_hit" if positive else "local_negative_hit"
        if self._debug_logging or ENVIRON_KEY in environ:
            self._record(environ, method, outcome, self._debug_logging)
        else:  # the usual case of _record, inline: the hit is this cheap
            environ[ENVIRON_KEY] = {self.name: {method: outcome}}
        if values:
            identity.update(values)
        return userid

    def _refresh_debug_flag(self) -> None:
        """At each invalidation-epoch check: near-cache hits read the log level from here."""
        self._debug_logging = logger.isEnabledFor(logging.DEBUG)

    # ---------------------------------------------------------------- operations

    def invalidate_user(self, login: Any = None, userid: Any = None) -> list[str]:
        """Make every cached entry of this user unusable at once, on every server (see
        :meth:`CacheRegion.invalidate_user`); returns the servers not reached."""
        return self.region.invalidate_user(login, userid)

    def invalidate_all(self) -> list[str]:
        """Drop everything this plugin cached; returns the servers not reached."""
        return self.region.invalidate_all()

    def _record(self, environ: dict, method: str, outcome: str, debug: bool | None = None
                ) -> None:
        """Tell the app (and the DEBUG log) what the cache did; never what the identity is.

        ``debug``: whether DEBUG is on, as last seen (the near cache's hits pass it: asking
        the logger costs them more than all their other bookkeeping). Every other call asks,
        and so does every invalidation-epoch check, so a change of log level reaches near-
        cache hits within ``local_check_interval``.
        """
        by_plugin = environ.get(ENVIRON_KEY)
        if by_plugin is None:  # the usual case, in one go (setdefault builds throwaway dicts)
            environ[ENVIRON_KEY] = {self.name: {method: outcome}}
        else:
            by_plugin.setdefault(self.name, {})[method] = outcome
        if debug is None:
            debug = self._debug_logging = logger.isEnabledFor(logging.DEBUG)
        if debug:
            logger.debug("cache %s: %s %s %s", self.name, method, outcome,
                         environ.get("PATH_INFO", ""))

    def _report_cache_error(self, server: str, message: str) -> None:
        self.counters.incr("cache_errors")
        self._warn.warning("cache-error-" + server, "cache %s: memcached %s: %s",
                           self.name, server, message)


# -------------------------------------------------------------------- the ini factory

CLIENT_CHOICES = tuple(BACKENDS)


def make_plugin(**options: Any) -> CachingPlugin:
    """Build a :class:`CachingPlugin` from ini-style string options (docs/options.rst).

    Options of the 2011 plugin keep their names and meaning: ``memcached_urls``,
    ``authenticator_name``, ``mdprovider_name``, ``key_items``, ``value_items``, ``secret``,
    ``ttl``. Every value is checked here, so a bad config fails when it is loaded.
    """
    given_name = options.get("name")
    opts = Options(options, f"[plugin:{given_name}]" if isinstance(given_name, str) else None)
    try:
        return _make_plugin(opts)
    except ConfigError as exc:
        # Say the section where we know it (``name`` given); our loaders add it otherwise.
        raise (exc.in_section(opts.section) if opts.section and not exc.section
               else exc) from None


def _make_plugin(opts: Options) -> CachingPlugin:
    name = opts.str("name") or None
    secret = opts.secret("secret", "secret_file", min_bytes=MIN_SECRET_BYTES)
    urls = opts.list("memcached_urls", ["127.0.0.1:11211"]) or []
    if not urls:
        raise opts.error("memcached_urls", "needs at least one host:port")
    socket_timeout = opts.float("socket_timeout", 0.5, minimum=0.001, maximum=60)
    # memcached_urls are twemproxy listeners in front of one pool (backends.PROXIES).
    proxy = opts.choice("memcached_proxy", "none", ("none", *PROXIES))
    settings = BackendSettings(
        servers=tuple(ServerAddress.parse(u) for u in urls),
        socket_timeout=socket_timeout,
        connect_timeout=opts.float("connect_timeout", socket_timeout, minimum=0.001, maximum=60),
        dead_retry=opts.float("dead_retry", 10.0, minimum=0, maximum=3600),
        tls_ca_file=_existing_file(opts, "memcached_tls_ca_file"),
        tls_cert_file=_existing_file(opts, "memcached_tls_cert_file"),
        tls_key_file=_existing_file(opts, "memcached_tls_key_file"),
        tls_verify=opts.bool("memcached_tls_verify", True),
        proxy="" if proxy == "none" else proxy,
    )
    client = opts.choice("memcached_client", "python-memcached", CLIENT_CHOICES)
    if settings.tls and client != "pymemcache":
        raise opts.error("memcached_client", "TLS to memcached needs memcached_client = pymemcache")
    if settings.tls and settings.proxy:
        raise opts.error("memcached_proxy", "twemproxy speaks no TLS: unset memcached_tls_* "
                         "or the proxy")
    if settings.tls_key_file and not settings.tls_cert_file:
        raise opts.error("memcached_tls_key_file", "needs memcached_tls_cert_file")

    authenticator = _inline_plugin(opts, "authenticator")
    mdprovider = _inline_plugin(opts, "mdprovider")
    prometheus = opts.bool("prometheus", False)
    kwargs: dict[str, Any] = dict(
        secret=secret,
        authenticator=authenticator,
        mdprovider=mdprovider,
        authenticator_name=opts.str("authenticator_name") or None,
        mdprovider_name=opts.str("mdprovider_name") or None,
        key_items=opts.list("key_items"),
        value_items=opts.list("value_items"),
        ttl=opts.int("ttl", 60, minimum=1, maximum=365 * 24 * 3600),
        negative_ttl=opts.int("negative_ttl", 0, minimum=0, maximum=24 * 3600),
        stale_ttl=opts.int("stale_ttl", 0, minimum=0, maximum=30 * 24 * 3600),
        lock_timeout=opts.int("lock_timeout", 0, minimum=0, maximum=600),
        login_item=opts.str("login_item", "login") or "login",
        key_prefix=opts.str("key_prefix", "") or "",
        name=name,
        stats_log_interval=opts.float("stats_log_interval", 300.0, minimum=0),
        local_ttl=opts.float("local_ttl", 0, minimum=0, maximum=3600),
        local_max_entries=opts.int("local_max_entries", 10_000, minimum=1, maximum=10_000_000),
        local_check_interval=opts.float("local_check_interval", 1.0, minimum=0.01,
                                        maximum=3600),
        password_item=opts.str("password_item", "password") or None,
        max_failures=opts.int("max_failures", 0, minimum=0, maximum=1_000_000),
        failure_window=opts.int("failure_window", 300, minimum=1, maximum=30 * 24 * 3600),
        refresh_ahead=opts.float("refresh_ahead", 0.0, minimum=0.0, maximum=0.9),
        ttl_jitter=opts.float("ttl_jitter", 0.1, minimum=0.0, maximum=0.5),
        previous_secrets=_previous_secrets(opts),
    )
    if authenticator is not None and kwargs["authenticator_name"]:
        raise opts.error("authenticator", "give 'authenticator' or 'authenticator_name', not both")
    if mdprovider is not None and kwargs["mdprovider_name"]:
        raise opts.error("mdprovider", "give 'mdprovider' or 'mdprovider_name', not both")
    opts.finish()

    holder: list[CachingPlugin] = []

    def report(server: str, message: str) -> None:
        if holder:
            holder[0]._report_cache_error(server, message)

    backend = BACKENDS[client](settings, report)
    plugin = CachingPlugin(backend=backend, **kwargs)
    holder.append(plugin)
    if prometheus and not register_prometheus(plugin.counters):
        raise opts.error("prometheus", "prometheus_client is not installed")
    return plugin


def _previous_secrets(opts: Options) -> list[str]:
    """``previous_secrets`` (inline, whitespace-separated) and ``previous_secret_files``:
    the secrets being rotated out. They are only read with, so a shorter secret of an older
    release is accepted here (16 bytes at least); the current ``secret`` must be strong."""
    found = [(f"previous_secrets[{i}]", s) for i, s in enumerate(
        opts.list("previous_secrets", []) or [])]
    for path in opts.list("previous_secret_files", []) or []:
        path = os.path.expanduser(path)
        try:
            with open(path, encoding="utf-8") as f:
                found.append((f"previous_secret_files ({path})", f.read().strip()))
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise opts.error("previous_secret_files", f"cannot read {path!r}: {why}") from None
    for label, secret in found:
        # An older release's random 16-byte secret must pass; a guessable one must not: a
        # previous secret opens entries, so whoever has it (and can write memcached) can
        # mint logins with it, as with the current one.
        if len(secret.encode("utf-8")) < 16 or len(set(secret)) < 10 or (
                estimate_secret_bits(secret) < 64):
            raise opts.error(label, "is too short or too easy to guess to be a secret of "
                             "ours (16 bytes of random text at least)")
    return [secret for _, secret in found]


def _registry(environ: dict) -> Mapping[str, Any]:
    """repoze.who's plugins by name for this request, under any way repoze.who is driven."""
    registry = environ.get("repoze.who.plugins")  # the stock middleware (only it sets this)
    if registry:
        return registry
    api = environ.get("repoze.who.api")  # every APIFactory: ours, stock, frameworks'
    return getattr(api, "name_registry", None) or {}


def _as_plugin(plugin: Any, iface: Any, option: str) -> Any:
    """A plugin object as given, or the object a ``module:object`` spec names."""
    if isinstance(plugin, str):
        plugin = build_plugin(plugin, {}, option) if plugin.strip() else None
    if plugin is not None and not iface.providedBy(plugin):
        raise ConfigError(f"{plugin!r} does not provide {iface.__name__}", option=option)
    return plugin


def _inline_plugin(opts: Options, option: str) -> Any:
    """``authenticator = module:factory`` plus ``authenticator.OPTION = value`` lines, or
    (configured from Python) a plugin object, or a factory to call with the sub-options."""
    spec = opts.pop_raw(option)
    sub_options = opts.pop_prefixed(option)
    iface = IAuthenticator if option == "authenticator" else IMetadataProvider
    if spec is not None and not isinstance(spec, str):
        if iface.providedBy(spec):
            if sub_options:
                raise opts.error(f"{option}.{next(iter(sub_options))}",
                                 f"given with a plugin object as '{option}'")
            return spec
        if not callable(spec):
            raise opts.error(option, f"{spec!r} is neither a plugin providing "
                             f"{iface.__name__}, a factory, nor a 'module:factory' spec")
        try:
            spec = spec(**sub_options)
        except ConfigError as exc:
            raise exc.under(option) from None
        if not iface.providedBy(spec):
            raise opts.error(option, f"the factory made {spec!r}, which does not provide "
                             f"{iface.__name__}")
        return spec
    spec = spec.strip() if spec else spec
    if not spec:
        if sub_options:
            raise opts.error(f"{option}.{next(iter(sub_options))}", f"given without '{option}'")
        return None
    plugin = build_plugin(spec, sub_options, option)
    if not iface.providedBy(plugin):
        raise opts.error(option, f"{spec!r} made {plugin!r}, which does not provide "
                         f"{iface.__name__}")
    return plugin


def _existing_file(opts: Options, name: str) -> str | None:
    path = opts.str(name)
    if path and not os.path.isfile(path):
        raise opts.error(name, f"no such file {path!r}")
    return path or None

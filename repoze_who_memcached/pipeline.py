"""The whole repoze.who stack from one PasteDeploy section, or from a who.ini, failing loudly.

Two routes to the same middleware:

* ``[filter:auth] use = egg:repoze_who_memcached`` with every option inline: identifiers
  and challengers (basic auth by default), the wrapped authenticator and metadata provider
  with their options, and the cache options (docs/configuration.rst, docs/options.rst).
* ``config_file = %(here)s/who.ini``: a classic who.ini, loaded by :func:`load_who_config`.

Unlike repoze.who's own loaders, a missing file, an unknown option or a bad value raises
:class:`ConfigError` at load time (repoze.who's ``make_api_factory_with_config`` quietly
builds a middleware that never authenticates anyone). And the middleware
(:mod:`repoze_who_memcached.middleware`) does at load time what stock repoze.who repeats on
every request: verifying every plugin's interfaces and matching them to the request.
"""

from __future__ import annotations

import configparser
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from repoze.who.classifiers import default_challenge_decider, default_request_classifier
from repoze.who.config import WhoConfig
from repoze.who.interfaces import IAuthenticator, IChallenger, IIdentifier

from .errors import ConfigError
from .middleware import AuthMiddleware, PrebuiltAPIFactory
from .options import Options, build_plugin, describe_config_parser_error, resolve_object
from .plugin import CachingPlugin, make_plugin

logger = logging.getLogger("repoze_who_memcached")

# Plugins the filter knows by name; ``plugin.NAME = module:factory`` adds others.
BUILTIN_PLUGINS = {
    "basicauth": "repoze_who_memcached.basicauth:make_plugin",
    "auth_tkt": "repoze.who.plugins.auth_tkt:make_plugin",
    "redirector": "repoze.who.plugins.redirector:make_plugin",
}
DEFAULT_REALM = "repoze_who_memcached"

PluginList = list[tuple[str, Any]]


# ------------------------------------------------------------------ who.ini route


def load_who_config(path: str, here: str | None = None) -> WhoConfig:
    """Parse a who.ini strictly and wire our cache plugins to the plugins they wrap.

    * a missing or unparsable file is a :class:`ConfigError` (never an empty config);
    * ``authenticator_name``/``mdprovider_name`` must name a ``[plugin:x]`` section;
    * plugins reached only through a cache plugin are dropped from the authenticator and
      metadata provider lists, so they are not called uncached as well, and the 2011 trick
      (``ldap;unused``) works even with no request classifier.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"no such file {path!r}", option="config_file")
    parser = WhoConfig(here or os.path.dirname(os.path.abspath(path)))
    try:
        with open(path, encoding="utf-8") as f:
            parser.parse(f)
    except ConfigError as exc:
        section = _failing_plugin_section(path, parser)
        raise exc.in_section(f"{path}: {section}" if section else path) from None
    except configparser.Error as exc:  # its messages quote values: secrets, passwords
        raise ConfigError(describe_config_parser_error(exc), section=path) from None
    except (ImportError, AttributeError, ValueError, TypeError, KeyError) as exc:
        section = _failing_plugin_section(path, parser)
        where = f"{path}: {section}" if section else path
        raise ConfigError(f"{type(exc).__name__}: {exc}", section=where) from None
    wrapped: set[int] = set()
    for name, plugin in parser.plugins.items():
        if isinstance(plugin, CachingPlugin):
            plugin.take_name(name)
            try:
                plugin.bind(parser.plugins)
            except ConfigError as exc:
                raise exc.in_section(f"{path}: [plugin:{name}]") from None
            wrapped.update(id(p) for p in (plugin.authenticator, plugin.mdprovider) if p)
    parser.authenticators[:] = [(n, p) for n, p in parser.authenticators if id(p) not in wrapped]
    parser.mdproviders[:] = [(n, p) for n, p in parser.mdproviders if id(p) not in wrapped]
    if not parser.identifiers:
        raise ConfigError(f"{path}: no [identifiers]: nobody could ever be identified")
    if not parser.authenticators:
        raise ConfigError(f"{path}: no [authenticators]: nobody could ever be authenticated")
    return parser


def _failing_plugin_section(path: str, parser: WhoConfig) -> str | None:
    """The ``[plugin:x]`` section WhoConfig was building when it raised.

    WhoConfig builds plugin sections in file order and files each in ``plugins`` when it is
    made, and does not say which one failed: it is the first one not filed yet.
    """
    sections = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        sections.read(path, encoding="utf-8")
    except configparser.Error:
        return None
    for section in sections.sections():
        if section.startswith("plugin:") and section[len("plugin:"):] not in parser.plugins:
            return f"[{section}]"
    return None


def make_middleware_from_who_config(app: Any, config: WhoConfig,
                                    remote_user_key: str | None = None) -> AuthMiddleware:
    return AuthMiddleware(
        app, config.identifiers, config.authenticators, config.challengers, config.mdproviders,
        config.request_classifier, config.challenge_decider,
        remote_user_key=remote_user_key or config.remote_user_key,
        cache_plugins=_unique_caches(p for _, p in [*config.authenticators, *config.mdproviders]),
    )


def make_api_factory_with_config(global_conf: Mapping[str, Any], config_file: str,
                                 remote_user_key: str = "REMOTE_USER",
                                 logger: Any = None) -> PrebuiltAPIFactory:
    """Drop-in for repoze.who's function of that name (used by pyramid_who and others),
    but strict: a missing file raises instead of yielding an empty API factory."""
    config = load_who_config(config_file, global_conf.get("here"))
    return PrebuiltAPIFactory(
        config.identifiers, config.authenticators, config.challengers, config.mdproviders,
        config.request_classifier or default_request_classifier,
        config.challenge_decider or default_challenge_decider, remote_user_key, logger,
    )


# ------------------------------------------------------------------ PasteDeploy filter


class MiddlewareFactory:
    """What ``paste.filter_factory`` returns: wraps an app; also tells the CLI its caches."""

    def __init__(self, build: Callable[[Any], AuthMiddleware],
                 cache_plugins: list[CachingPlugin]) -> None:
        self._build = build
        self.cache_plugins = cache_plugins

    def __call__(self, app: Any) -> AuthMiddleware:
        return self._build(app)


def make_filter(global_conf: Mapping[str, Any], **local_conf: Any) -> MiddlewareFactory:
    """``paste.filter_factory``: everything is built and checked now, at pipeline load."""
    return build_middleware_factory(global_conf, local_conf)


def build_middleware_factory(global_conf: Mapping[str, Any],
                             local_conf: Mapping[str, Any]) -> MiddlewareFactory:
    opts = Options(local_conf, filter_section(global_conf, local_conf))
    config_file = opts.str("config_file")
    remote_user_key = opts.str("remote_user_key", "REMOTE_USER")
    if config_file:
        leftover = [k for k in ("identifiers", "authenticator", "secret") if opts.has(k)]
        if leftover:
            raise opts.error(leftover[0], "use config_file or inline options, not both")
        opts.finish()
        config = load_who_config(config_file, global_conf.get("here"))
        return MiddlewareFactory(
            lambda app: make_middleware_from_who_config(app, config, remote_user_key),
            _unique_caches(config.plugins.values()),
        )

    realm = opts.str("realm", DEFAULT_REALM)
    identifier_names = opts.list("identifiers", ["basicauth"]) or []
    challenger_names = opts.list("challengers", ["basicauth"]) or []
    extra_authenticators = opts.list("authenticators", []) or []
    request_classifier = _optional_object(opts, "request_classifier")
    challenge_decider = _optional_object(opts, "challenge_decider")
    use_cache = opts.bool("cache", True)

    defined = {name: opts.pop_raw(key) for key in list(local_conf)
               if key.startswith("plugin.") and key.count(".") == 1
               for name in [key[len("plugin."):]]}
    plugins: dict[str, Any] = {}

    def named(name: str, option: str) -> Any:
        if name not in plugins:
            sub_options = opts.pop_prefixed(f"plugin.{name}")
            spec = defined.get(name) or BUILTIN_PLUGINS.get(name)
            if spec is None:
                raise opts.error(option, f"unknown plugin {name!r}: define it with "
                                 f"'plugin.{name} = module:factory' (built in: "
                                 f"{', '.join(BUILTIN_PLUGINS)})")
            if spec == BUILTIN_PLUGINS["basicauth"]:
                sub_options.setdefault("realm", realm)
            plugins[name] = build_plugin(str(spec), sub_options, f"plugin.{name}")
        return plugins[name]

    identifiers = _plugin_list(identifier_names, IIdentifier, named, "identifiers")
    challengers = _plugin_list(challenger_names, IChallenger, named, "challengers")
    authenticators = _plugin_list(extra_authenticators, IAuthenticator, named, "authenticators")
    unused_definitions = set(defined) - set(plugins)
    if unused_definitions:
        raise opts.error(f"plugin.{sorted(unused_definitions)[0]}",
                         "defined but not listed in identifiers, challengers or authenticators")

    mdproviders: PluginList = []
    if use_cache:
        try:
            cache = make_plugin(**_cache_options(opts, local_conf))
        except ConfigError as exc:
            raise exc.in_section(opts.where) from None
        if cache.authenticator is not None:
            authenticators.append(("cache", cache))
        if cache.mdprovider is not None:
            mdproviders.append(("cache", cache))
        if cache.authenticator_name or cache.mdprovider_name:
            cache.bind(plugins)
    else:
        for option, target in (("authenticator", authenticators), ("mdprovider", mdproviders)):
            spec = opts.str(option)
            sub_options = opts.pop_prefixed(option)
            if spec:
                target.append((option, build_plugin(spec, sub_options, option)))
        for key in list(local_conf):
            opts.pop_raw(key)  # cache options are meaningless without the cache
    opts.finish()
    if not authenticators:
        raise opts.error("authenticator", "is required: nobody could ever be authenticated")
    if not challengers:
        raise opts.error("challengers", "needs at least one challenger")

    caches = _unique_caches(p for _, p in [*authenticators, *mdproviders])

    def build(app: Any) -> AuthMiddleware:
        return AuthMiddleware(app, identifiers, authenticators, challengers, mdproviders,
                              request_classifier, challenge_decider,
                              remote_user_key=remote_user_key or "REMOTE_USER",
                              cache_plugins=caches)

    return MiddlewareFactory(build, caches)


def filter_section(global_conf: Mapping[str, Any], local_conf: Mapping[str, Any]) -> str:
    """``[filter:NAME]`` of the PasteDeploy file the filter is loaded from, for messages.

    PasteDeploy tells a filter factory its file (``global_conf["__file__"]``) but not its
    section: it is the section of that file that uses this distribution's filter and whose
    options are the ones we were given (several filters of ours in one file differ in them).
    """
    fallback = "[filter] (egg:repoze_who_memcached)"
    path = global_conf.get("__file__")
    if not isinstance(path, str) or not os.path.isfile(path):
        return fallback
    parser = configparser.ConfigParser(interpolation=None, strict=False,
                                       default_section="\0no default section")
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # as PasteDeploy
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error:
        return fallback
    ours = []
    for section in parser.sections():
        kind, _, _ = section.partition(":")
        use = parser.get(section, "use", fallback="").strip()
        if kind.strip() in ("filter", "filter-app") and use.split("#")[0] in OUR_EGG_NAMES:
            ours.append(section)
    matching = [
        section for section in ours
        if set(local_conf) <= {k for k in parser[section] if k not in ("use", "next")}
        | set(global_conf)
    ]
    found = matching if len(matching) == 1 else ours if len(ours) == 1 else []
    return f"[{found[0]}]" if found else fallback


OUR_EGG_NAMES = frozenset({"egg:repoze_who_memcached", "egg:repoze-who-memcached"})


def _unique_caches(plugins: Iterable[Any]) -> list[CachingPlugin]:
    """Our cache plugins among ``plugins``, each once (one plugin may play both roles)."""
    return list({id(p): p for p in plugins if isinstance(p, CachingPlugin)}.values())


def _cache_options(opts: Options, local_conf: Mapping[str, Any]) -> dict[str, Any]:
    """What is left of the section after the filter's own options: the cache's options."""
    taken = {}
    for key in list(local_conf):
        value = opts.pop_raw(key, None)
        if value is not None:
            taken[key] = value
    return taken


def _plugin_list(names: Iterable[str], iface: Any, named: Callable[[str, str], Any],
                 option: str) -> PluginList:
    result = []
    for name in names:
        plugin = named(name, option)
        if not iface.providedBy(plugin):
            raise ConfigError(f"option {option!r}: plugin {name!r} does not provide "
                              f"{iface.__name__}")
        result.append((name, plugin))
    return result


def _optional_object(opts: Options, name: str) -> Any:
    spec = opts.str(name)
    return resolve_object(spec, name) if spec else None


__all__ = [
    "AuthMiddleware",
    "MiddlewareFactory",
    "PrebuiltAPIFactory",
    "build_middleware_factory",
    "load_who_config",
    "make_api_factory_with_config",
    "make_filter",
]

"""Turning ini strings into typed values, strictly, at load time.

Every ``make_*`` factory in this package receives its options as strings (that is what
repoze.who's ``WhoConfig`` and PasteDeploy hand over). Each helper here pops one option,
converts it and raises :class:`ConfigError` naming the option when the value is bad, so a
broken config fails when it is loaded instead of on some later request.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from importlib import metadata
from typing import Any

from .errors import ConfigError

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})

# Entry point group for our plugins, so ``egg:repoze_who_memcached#ldap_authenticator``
# works wherever a plugin factory is named.
PLUGIN_ENTRY_POINT_GROUP = "repoze_who_memcached.plugins"


class Options:
    """A bag of string options that are taken one by one; leftovers are errors.

    ``where`` names the config section in messages (e.g. ``[plugin:cached_ldap]``), or is
    None when the caller cannot know it (repoze.who's own loaders do not say which section
    they are building): the loaders that do know add it (:meth:`ConfigError.in_section`).
    """

    def __init__(self, raw: Mapping[str, Any], where: str | None) -> None:
        self._raw: MutableMapping[str, Any] = dict(raw)
        self.section = where
        self.where = where or "config"

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, option=name, section=self.section)

    def unknown(self) -> list[str]:
        """The options nobody has taken so far (typos, once every option was taken)."""
        return sorted(self._raw)

    def has(self, name: str) -> bool:
        return name in self._raw

    def pop_raw(self, name: str, default: Any = None) -> Any:
        return self._raw.pop(name, default)

    def pop_prefixed(self, prefix: str) -> dict[str, Any]:
        """Take every ``prefix.NAME = value`` option, returned as ``{NAME: value}``."""
        taken = {}
        for key in [k for k in self._raw if k.startswith(prefix + ".")]:
            taken[key[len(prefix) + 1 :]] = self._raw.pop(key)
        return taken

    def str(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._raw.pop(name, None)
        if value is None:
            if required:
                raise self.error(name, "is required")
            return default
        if not isinstance(value, str):
            return value
        value = value.strip()
        if required and not value:
            raise self.error(name, "must not be empty")
        return value

    def list(self, name: str, default: Iterable[str] | None = None) -> list[str] | None:
        """Whitespace- or newline-separated words (commas are accepted too)."""
        value = self._raw.pop(name, None)
        if value is None:
            return None if default is None else list(default)
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        return value.replace(",", " ").split()

    def bool(self, name: str, default: bool) -> bool:
        value = self._raw.pop(name, None)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise self.error(name, f"expected true or false, got {value!r}")

    def int(
        self, name: str, default: int, *, minimum: int | None = 0, maximum: int | None = None
    ) -> int:
        value = self._raw.pop(name, None)
        if value is None:
            return default
        try:
            number = int(str(value).strip())
        except ValueError:
            raise self.error(name, f"expected a whole number, got {value!r}") from None
        return self._check_range(name, number, minimum, maximum)

    def float(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = 0.0,
        maximum: float | None = None,
    ) -> float:
        value = self._raw.pop(name, None)
        if value is None:
            return default
        try:
            number = float(str(value).strip())
        except ValueError:
            raise self.error(name, f"expected a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise self.error(name, f"expected a finite number, got {value!r}")
        return self._check_range(name, number, minimum, maximum)

    def choice(self, name: str, default: str, choices: Iterable[str]) -> str:
        allowed = list(choices)
        value = self.str(name, default)
        assert value is not None
        value = value.lower()
        if value not in allowed:
            raise self.error(name, f"expected one of {', '.join(allowed)}, got {value!r}")
        return value

    def secret(
        self, name: str, file_name: str, *, required: bool = True, min_bytes: int = 0
    ) -> str | None:
        """A secret given inline (``name``) or read from a file (``file_name``), never both."""
        inline = self._raw.pop(name, None)
        path = self._raw.pop(file_name, None)
        if inline is not None and path is not None:
            raise self.error(name, f"give {name} or {file_name}, not both")
        if path is not None:
            path = os.path.expanduser(str(path).strip())
            try:
                with open(path, encoding="utf-8") as f:
                    inline = f.read().strip()
            except OSError as exc:
                raise self.error(file_name, f"cannot read {path!r}: {exc.strerror}") from None
            label = f"{file_name} ({path})"
        else:
            label = name
            if isinstance(inline, str):
                inline = inline.strip()
        if not inline:
            if required:
                raise ConfigError(
                    f"{self.where}: option {name!r} is required (or {file_name!r}) and has no "
                    "default; every server sharing the cache must use the same value"
                )
            return None
        if len(inline.encode("utf-8")) < min_bytes:
            raise ConfigError(
                f"{self.where}: option {label!r} is too short: use at least {min_bytes} bytes "
                "of random text (e.g. from `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)"
            )
        return inline

    def finish(self, ignore: Iterable[str] = ()) -> None:
        """Refuse options nobody took: a typo must not be silently ignored."""
        leftover = sorted(k for k in self._raw if k not in set(ignore))
        if leftover:
            more = leftover[1:]
            also = f" (also unknown: {', '.join(repr(k) for k in more)})" if more else ""
            raise self.error(leftover[0], "unknown option" + also)

    def _check_range(self, name, number, minimum, maximum):
        if minimum is not None and number < minimum:
            raise self.error(name, f"must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise self.error(name, f"must be at most {maximum}, got {number}")
        return number


def resolve_object(spec: str, option: str = "use") -> Any:
    """Find the object a config names: ``module:attr``, ``module.attr`` or ``egg:dist#name``.

    ``egg:`` names are looked up in our plugin entry point group, so an ini file can say
    ``authenticator = egg:repoze_who_memcached#ldap_authenticator``.
    """
    spec = spec.strip()
    try:
        if spec.startswith("egg:"):
            dist, _, name = spec[4:].partition("#")
            for ep in metadata.entry_points(group=PLUGIN_ENTRY_POINT_GROUP):
                if ep.name == name and (ep.dist is None or _same_dist(ep.dist.name, dist)):
                    return ep.load()
            raise LookupError(f"no entry point {name!r} in group {PLUGIN_ENTRY_POINT_GROUP}")
        if ":" in spec:
            module_name, _, attr_path = spec.partition(":")
        else:
            module_name, _, attr_path = spec.rpartition(".")
        if not module_name or not attr_path:
            raise LookupError("expected module:object")
        obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError, LookupError) as exc:
        raise ConfigError(f"cannot find {spec!r}: {exc}", option=option) from None


def _same_dist(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return s.lower().replace("-", "_").replace(".", "_")

    return norm(a) == norm(b)


def build_plugin(spec: str, options: Mapping[str, Any], option: str) -> Any:
    """Resolve ``spec`` and, when it is a factory, call it with ``options`` (strings).

    A factory's own errors come back under the option's name, ``base_dn`` of the
    ``authenticator`` as ``authenticator.base_dn``; the caller adds the section.
    """
    factory: Callable[..., Any] | Any = resolve_object(spec, option)
    if not callable(factory) or _looks_like_plugin(factory):
        if options:
            raise ConfigError(f"{spec!r} is an object, it takes no options", option=option)
        return factory
    try:
        return factory(**options)
    except ConfigError as exc:
        raise exc.under(option) from None
    except TypeError as exc:
        raise ConfigError(f"({spec}): {exc}", option=option) from None


def _looks_like_plugin(obj: Any) -> bool:
    from repoze.who.interfaces import IAuthenticator, IMetadataProvider

    return IAuthenticator.providedBy(obj) or IMetadataProvider.providedBy(obj)

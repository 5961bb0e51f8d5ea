"""Turning ini strings into typed values, strictly, at load time.

Every ``make_*`` factory in this package receives its options as strings (that is what
repoze.who's ``WhoConfig`` and PasteDeploy hand over). Each helper here pops one option,
converts it and raises :class:`ConfigError` naming the option when the value is bad, so a
broken config fails when it is loaded instead of on some later request.
"""

from __future__ import annotations

import configparser
import contextlib
import contextvars
import importlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from importlib import metadata
from typing import Any

from .errors import ConfigError

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})

# Entry point group for our plugins, so ``egg:repoze_who_memcached#ldap_authenticator``
# works wherever a plugin factory is named.
PLUGIN_ENTRY_POINT_GROUP = "repoze_who_memcached.plugins"


_RECORDING: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "repoze_who_memcached_option_recording", default=None)


@contextlib.contextmanager
def recording_options() -> Iterator[dict[str, Any]]:
    """Every option name a factory asks for while this is active, with its default:
    ``{name: default}`` (``prefix.*`` for sub-option prefixes). The manual's tests compare
    it with the documented options, so the code's options are the one source of truth."""
    seen: dict[str, Any] = {}
    token = _RECORDING.set(seen)
    try:
        yield seen
    finally:
        _RECORDING.reset(token)


def _record(name: str, default: Any = None) -> None:
    seen = _RECORDING.get()
    if seen is not None:
        seen.setdefault(name, default)


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
        _record(name, default)
        return self._raw.pop(name, default)

    def pop_prefixed(self, prefix: str) -> dict[str, Any]:
        """Take every ``prefix.NAME = value`` option, returned as ``{NAME: value}``."""
        _record(prefix + ".*")
        taken = {}
        for key in [k for k in self._raw if k.startswith(prefix + ".")]:
            taken[key[len(prefix) + 1 :]] = self._raw.pop(key)
        return taken

    def str(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        _record(name, default)
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
        _record(name, default)
        value = self._raw.pop(name, None)
        if value is None:
            return None if default is None else list(default)
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        return value.replace(",", " ").split()

    def bool(self, name: str, default: bool) -> bool:
        _record(name, default)
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
        _record(name, default)
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
        _record(name, default)
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
        """A secret given inline (``name``) or read from a file (``file_name``), never both.

        ``min_bytes > 0`` marks a key of ours (the cache ``secret``): it must then pass
        :func:`check_secret_strength` (at least ``max(min_bytes, 32)`` bytes and not
        guessable). Passwords of other systems (``bind_password``) pass ``min_bytes = 0``:
        we cannot choose them, so they are taken as they are. No message here ever holds
        the value.
        """
        _record(name)
        _record(file_name)
        inline = self._raw.pop(name, None)
        path = self._raw.pop(file_name, None)
        if inline is not None and path is not None:
            raise self.error(name, f"give {name} or {file_name}, not both")
        if path is not None:
            path = os.path.expanduser(str(path).strip())
            inline = self._read_secret_file(file_name, path)
            label = f"{file_name} ({path})"
        else:
            label = name
            if isinstance(inline, str):
                inline = inline.strip()
        if not inline:
            if required:
                raise self.error(
                    name, f"is required (or {file_name!r}) and has no default; every server "
                    f"sharing the cache must use the same value; {GENERATE_ADVICE}"
                )
            return None
        if min_bytes > 0:
            try:
                check_secret_strength(inline, label, max(min_bytes, MIN_STRONG_SECRET_BYTES))
            except ConfigError as exc:
                raise exc.in_section(self.section) if self.section else exc from None
        return inline

    def _read_secret_file(self, file_name: str, path: str) -> str:
        """The stripped text of a secret file; errors name the file, never its content."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise self.error(file_name, f"cannot read {path!r}: {exc.strerror}") from None
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            # The decoder's message quotes the offending byte: a piece of the secret.
            raise self.error(file_name, f"{path!r} is not UTF-8 text") from None

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


# ------------------------------------------------------------------ secret strength

# A cache secret derives the HMAC key of every cache key and the AES key of every value:
# anyone who guesses it can forge entries. These are the rules check_secret_strength applies.
MIN_STRONG_SECRET_BYTES = 32
MIN_SECRET_BITS = 128
MIN_DISTINCT_CHARACTERS = 10
# A repeat of this many characters or more, of text seen earlier in the secret, adds nothing.
_REPEAT_LENGTH = 3
# Runs with steps up to this are patterns (abcd, 1357, 9876); larger ones are rare by hand.
_MAX_RUN_STEP = 2
# Only this many characters are rated (the rating is quadratic; more cannot lower it).
_RATED_CHARACTERS = 1024
# Sizes of the character classes the estimate counts: printable ASCII has 33 characters
# that are not letters or digits; "non-ascii" is rated as one byte's upper half.
_CLASS_SIZES = {"lower": 26, "upper": 26, "digit": 10, "other": 33, "non-ascii": 128}
GENERATE_ADVICE = ("make one with `repoze-who-memcached generate-secret FILE` and point "
                 "secret_file at FILE")


def estimate_secret_bits(secret: str) -> float:
    """A deliberately pessimistic estimate of how many bits of guessing ``secret`` takes.

    The rule (documented in docs/security.rst): each character is worth log2 of the summed size of
    the character classes the secret uses (lowercase 26, uppercase 26, digits 10, other
    ASCII 33, non-ASCII 128), except characters that only continue a pattern, which are
    worth nothing:

    * a character equal to the one before it (``aaaa``);
    * a character whose code point steps from the one before by the same amount (1 or 2, up
      or down) as the step before (``abcd``, ``1357``, ``9876``);
    * characters of a run of three or more that already appeared earlier in the secret
      (the second ``password`` of ``passwordpassword``).

    Random text loses almost nothing to these rules (a token_urlsafe(32) rates about 250
    bits); text people make up loses a lot. Words are not recognised: a phrase of
    dictionary words rates higher than it should, so prefer generate-secret. Only the first
    1024 characters are rated.
    """
    secret = secret[:_RATED_CHARACTERS]
    classes = set()
    for char in secret:
        if "a" <= char <= "z":
            classes.add("lower")
        elif "A" <= char <= "Z":
            classes.add("upper")
        elif "0" <= char <= "9":
            classes.add("digit")
        elif char < "\x80":
            classes.add("other")
        else:
            classes.add("non-ascii")
    bits_per_character = math.log2(sum(_CLASS_SIZES[c] for c in classes) or 1)
    worth = 0
    position = 0
    while position < len(secret):
        repeat = _repeat_length_at(secret, position)
        if repeat:
            position += repeat
            continue
        char = ord(secret[position])
        if position >= 1:
            step = char - ord(secret[position - 1])
            previous_step = (ord(secret[position - 1]) - ord(secret[position - 2])
                             if position >= 2 else None)
            if step == 0 or (step == previous_step and abs(step) <= _MAX_RUN_STEP):
                position += 1
                continue
        worth += 1
        position += 1
    return worth * bits_per_character


def _repeat_length_at(text: str, position: int) -> int:
    """Length of the longest run of at least _REPEAT_LENGTH characters starting at
    ``position`` that also starts earlier in ``text`` (copies may overlap: ``abcabcabc``)."""
    found = 0
    length = _REPEAT_LENGTH
    while position + length <= len(text):
        if text.find(text[position:position + length], 0, position + length - 1) == -1:
            break
        found = length
        length += 1
    return found


def check_secret_strength(secret: bytes | str, label: str,
                          min_bytes: int = MIN_STRONG_SECRET_BYTES) -> None:
    """Raise :class:`ConfigError` unless ``secret`` is long and random-looking enough.

    Required: at least ``min_bytes`` bytes (UTF-8), at least MIN_DISTINCT_CHARACTERS
    different characters, and :func:`estimate_secret_bits` of at least MIN_SECRET_BITS.
    ``label`` names the option in the message (``secret``, or ``secret_file (PATH)``); the
    message says which rule failed and how to make a good secret, and never contains the
    secret or any part of it.
    """
    if isinstance(secret, bytes):
        raw = secret
        try:
            text = secret.decode("utf-8")
        except UnicodeDecodeError:  # random bytes from code: rate them one byte at a time
            text = secret.decode("latin-1")
    else:
        raw = secret.encode("utf-8", errors="surrogatepass")
        text = secret
    if len(raw) < min_bytes:
        problem = f"is too short ({len(raw)} bytes; at least {min_bytes} are required)"
    elif len(set(text)) < MIN_DISTINCT_CHARACTERS:
        problem = (f"uses fewer than {MIN_DISTINCT_CHARACTERS} different characters, "
                   "which is not random text")
    elif estimate_secret_bits(text) < MIN_SECRET_BITS:
        problem = (f"is too easy to guess (estimated under {MIN_SECRET_BITS} bits: repeats, "
                   "runs such as abcd or 1234, or too few kinds of characters)")
    else:
        return
    raise ConfigError(f"{problem}; {GENERATE_ADVICE}", option=label)


def describe_config_parser_error(exc: configparser.Error) -> str:
    """What went wrong in an ini file, naming section, option or line, never a value.

    configparser's own messages quote values (``'%' must be followed by '%' or '(', found:
    '%...rest of the secret'``) and whole lines; a secret or a password must not end up in
    a terminal or a log that way. Every loader and the CLI report parser errors with this.
    """
    where = f"[{exc.section}] option {exc.option!r}" if isinstance(
        exc, configparser.InterpolationError) else ""
    if isinstance(exc, configparser.InterpolationMissingOptionError):
        return (f"{where}: refers to a %(name)s that is not defined (a literal '%' is "
                "written '%%'); the value is not shown")
    if isinstance(exc, configparser.InterpolationDepthError):
        return f"{where}: its %(name)s references nest too deep; the value is not shown"
    if isinstance(exc, configparser.InterpolationError):
        return (f"{where}: a '%' must be written '%%' (or start a %(name)s reference); "
                "the value is not shown")
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"[{exc.section}] option {exc.option!r} is given twice{_at_line(exc.lineno)}"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"section [{exc.section}] is given twice{_at_line(exc.lineno)}"
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: an option before any [section] header"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(number) for number, _ in getattr(exc, "errors", []))
        return f"cannot parse line {lines or '?'} (not 'name = value', a [section] or a comment)"
    if isinstance(exc, configparser.NoSectionError):
        return f"no section [{exc.section}]"
    if isinstance(exc, configparser.NoOptionError):
        return f"[{exc.section}] has no option {exc.option!r}"
    return f"the file cannot be parsed ({type(exc).__name__})"


def _at_line(lineno: int | None) -> str:
    return f" (line {lineno})" if lineno else ""

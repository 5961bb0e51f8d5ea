"""Cache keys: HMAC-SHA256 over an unambiguous encoding of what identifies a result.

A key must (a) be the same for the same identity in every process sharing the secret,
(b) differ whenever any keyed item differs, and (c) reveal nothing about the credentials it
was made from. HMAC under a key derived from ``secret`` gives (c); the canonical encoding
below gives (a) and (b): every value is type-tagged and length-prefixed, so no two distinct
item lists encode to the same bytes (``("ab", "c")`` and ``("a", "bc")`` differ, ``"1"`` and
``1`` differ, ``b"x"`` and ``"x"`` differ, ``["a"]`` and ``("a",)`` differ).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import marshal
import os
import re
import unicodedata
import zlib
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError
from .memos import remember

KEY_DIGEST_CHARS = 43  # urlsafe base64 of 32 bytes, unpadded
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_SHA256_BLOCK = 64
MAX_PREFIX_CHARS = 200  # memcached keys are at most 250 bytes
HASH_TAG_CHARS = 12  # digest characters inside a key's twemproxy hash tag ``{...}``
TAGGED_MAX_PREFIX_CHARS = 250 - (HASH_TAG_CHARS + 2) - KEY_DIGEST_CHARS  # 193
NAMESPACE_REPLICAS = 16
"""Copies of the namespace token behind a proxy (see :meth:`KeyMaker.namespace_key_for`)."""
USER_KEY_MEMO_SIZE = 10_000  # user generation keys remembered per process (logins, no secrets)
ENTRY_KEY_MEMO_SIZE = 10_000
"""Entry keys remembered per process, by a keyed digest of what they were made from (see
:meth:`KeyMaker.entry_key`): about 2.5 MB when full, then emptied."""
_MARSHAL_VERSION = 2  # no back-references: equal items encode alike (nearcache.py)


class Unencodable(TypeError):
    """A value that has no canonical encoding (e.g. a plugin object)."""


def derive_subkey(secret: bytes, purpose: str) -> bytes:
    """One independent 32-byte key per purpose, so no key is ever used for two jobs."""
    return hmac.new(secret, b"repoze_who_memcached/v1/" + purpose.encode(), hashlib.sha256).digest()


def encode_value(value: Any, out: list[bytes]) -> None:
    """Append the canonical, type-tagged encoding of ``value`` to ``out``."""
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        out.append(b"s%d:" % len(data))
        out.append(data)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(b"b%d:" % len(data))
        out.append(data)
    elif value is None:
        out.append(b"N")
    elif value is True or value is False:
        out.append(b"T" if value else b"F")
    elif isinstance(value, int):
        try:
            out.append(b"i%d;" % value)
        except ValueError:  # over sys.int_max_str_digits: hex has no such limit
            out.append(b"I%x;" % value)
    elif isinstance(value, float):
        out.append(b"f" + float.hex(value).encode() + b";")
    elif isinstance(value, (list, tuple)):
        out.append((b"t%d:" if isinstance(value, tuple) else b"l%d:") % len(value))
        for item in value:
            encode_value(item, out)
    elif isinstance(value, dict):
        entries = []
        for k, v in value.items():
            part: list[bytes] = []
            encode_value(k, part)
            encode_value(v, part)
            entries.append(b"".join(part))
        out.append(b"d%d:" % len(entries))
        out.extend(sorted(entries))
    else:
        raise Unencodable(type(value).__name__)


def _encoded(head: bytes, value: Any) -> list[bytes]:
    out = [head]
    encode_value(value, out)
    return out


# The start of every entry key's payload, per method (the plugin's two), encoded once.
_ENTRY_HEADS = {m: b"".join(_encoded(b"entry\0", m)) for m in ("authenticate", "add_metadata")}


def is_encodable(value: Any) -> bool:
    try:
        encode_value(value, [])
    except (Unencodable, RecursionError):
        return False
    return True


# RFC 4518 (LDAP string preparation), the matching a directory applies to a login's
# case-ignore attributes: characters mapped to nothing, characters mapped to a space.
_MAPPED_TO_NOTHING = re.compile(
    "[\u00ad\u034f\u1806\u180b-\u180e\u200b-\u200d\u2060\ufe00-\ufe0f\ufeff\ufffc"
    "\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]"
)
_MAPPED_TO_SPACE = re.compile("[\t\n\x0b\x0c\r\x85\u2028\u2029]")
_SPACES = re.compile(r"\s+")  # after NFKC every space separator (Zs) is U+0020


def ldap_normal_form(text: str) -> str:
    """The form under which a directory's case-ignore matching (RFC 4518) compares ``text``.

    Map (soft hyphens, zero-width and control characters to nothing; line and tab
    characters to a space), case-fold, NFKC (full-width forms, no-break spaces, NFD), and
    insignificant spaces (leading and trailing dropped, inner runs as one). ``" Alice"``,
    ``"alice\u00a0"`` and ``"\uff41lice"`` are all ``"alice"``, as slapd finds them.
    Used for per-user generation keys: invalidating a login must drop what any spelling the
    directory treats as the same account cached. Over-invalidation only costs a miss.
    """
    # U+0130 (I with a dot above): slapd matches it as "i", Python's casefold() keeps the dot.
    text = text.replace("\u0130", "i")
    mapped = _MAPPED_TO_SPACE.sub(" ", _MAPPED_TO_NOTHING.sub("", text))
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", mapped).casefold())
    return _SPACES.sub(" ", folded).strip(" ")


_SECRET_LOOKING = re.compile(r"pass|secret|key|token|cred|salt|private", re.IGNORECASE)


def scope_digest(scope: bytes) -> bytes:
    """The fixed-size form in which a scope (:func:`plugin_fingerprint` and what else an
    answer depends on) goes into keys: computed once, when the plugin is bound."""
    return hashlib.sha256(scope).digest()


def plugin_fingerprint(plugin: Any) -> bytes:
    """What a wrapped plugin's answers depend on, for binding cache entries to it.

    A plugin may say it itself, with ``cache_fingerprint() -> str`` (our LDAP plugins do:
    server URLs, base DNs, filters, never the bind password). Otherwise: its class, and its
    public attributes that hold text (file names, URLs, queries), except those whose names
    look secret. Counters and other numbers are left out: they change while a process runs,
    and every process with the same configuration must compute the same fingerprint.
    The result only ever goes into an HMAC under the cache's secret.
    """
    cls = type(plugin)
    out: list[bytes] = [b"plugin\0"]
    encode_value(f"{cls.__module__}.{cls.__qualname__}", out)
    own = getattr(plugin, "cache_fingerprint", None)
    if callable(own):
        encode_value(str(own()), out)
        return b"".join(out)
    try:
        attributes = vars(plugin)
    except TypeError:  # __slots__ or a builtin: the class must do
        return b"".join(out)
    for name in sorted(n for n in attributes if isinstance(n, str)):
        value = attributes[name]
        if name.startswith("_") or _SECRET_LOOKING.search(name):
            continue
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            value = tuple(value)
        elif not isinstance(value, str):
            continue
        encode_value(name, out)
        encode_value(value, out)
    return b"".join(out)


class KeyMaker:
    """Makes every memcached key this plugin uses, all of the same shape: prefix + digest.

    Entry keys, per-user generation keys, the namespace generation key and lock keys are
    HMACs under one derived key with distinct labels, so they can never collide with one
    another, and an observer of memcached learns nothing but "some key".
    """

    def __init__(self, secret: bytes, prefix: str = "", *, hash_tags: bool = False) -> None:
        check_prefix(prefix, hash_tags=hash_tags)
        self.prefix = prefix
        # Behind twemproxy (``memcached_proxy``): every key of one user carries the same hash
        # tag, ``{`` + the first HASH_TAG_CHARS characters of the user's generation key's
        # digest + ``}``, so twemproxy (``hash_tag: "{}"``) sends them all to one backend.
        # The tag is HMAC output: it links a user's keys together, never to the login.
        self.hash_tags = hash_tags
        self._tag_at = len(prefix)
        # HMAC-SHA256 (RFC 2104) with its keyed inner and outer states computed once: per key
        # we copy two C hash objects instead of building a Python-level hmac.HMAC (3x faster).
        # Equality with hmac.new() is asserted by the tests.
        mac_key = derive_subkey(secret, "cache-key").ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in mac_key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in mac_key))
        # A user's generation key is asked for on every request and depends on the login
        # alone: remember it (emptied when full; a login is no secret).
        self._user_keys: dict[str, str] = {}
        # Entry keys are made from credentials, so they are remembered by a keyed BLAKE2s
        # digest of their items (a random key of this process's own), never by the items.
        self._entry_memo_hash = hashlib.blake2s(key=os.urandom(32), digest_size=16)
        self._entry_keys: dict[bytes, str] = {}

    def mac(self, payload: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def _digest(self, payload: bytes) -> str:
        # urlsafe base64 in C calls (base64.urlsafe_b64encode is two Python-level calls).
        digest = binascii.b2a_base64(self.mac(payload), newline=False).translate(_URLSAFE)
        return digest[:KEY_DIGEST_CHARS].decode("ascii")

    def _key(self, payload: bytes, tag: str = "") -> str:
        """``prefix + tag + digest``; behind a proxy a key given no tag gets one of its own
        (its digest's), so that every key has the same shape."""
        digest = self._digest(payload)
        if self.hash_tags and not tag:
            tag = "{" + digest[:HASH_TAG_CHARS] + "}"
        return self.prefix + tag + digest

    def tag_of(self, key: str | None) -> str:
        """The hash tag a key of ours carries ("" without hash tags or without a key)."""
        if not self.hash_tags or not key:
            return ""
        at = self._tag_at
        return key[at : at + HASH_TAG_CHARS + 2]

    def entry_head(self, method: str, scope: bytes = b"") -> bytes:
        """The start of every entry key's payload for ``method`` answered by the plugin
        ``scope`` fingerprints (:func:`plugin_fingerprint`): computed when the plugin is
        bound, so the request path only appends the items. Two caches in front of different
        backends never compute the same entry key, whatever secret and prefix they share."""
        head = _ENTRY_HEADS.get(method) or b"".join(_encoded(b"entry\0", method))
        if not scope:
            return head
        return head + b"".join(_encoded(b"scope\0", scope_digest(scope)))

    def entry_key(self, method: str, items: Iterable[tuple[str, Any]],
                  head: bytes | None = None, tag: str = "") -> str:
        """Key for a cached result of ``method`` for these (name, value) items, in order
        (``head``: from :meth:`entry_head`, binding the key to the plugin that answers;
        ``tag``: the owning user's, :meth:`tag_of` their generation key, behind a proxy).

        Every cached request needs its entry key, and an HMAC over the canonical encoding
        costs about a fifth of a memcached hit's own CPU. So keys are remembered by a keyed
        BLAKE2s digest of the ``marshal`` encoding of (method, head, tag, items), at a third
        of the cost. ``marshal`` tells apart everything the canonical encoding does (types
        included; it writes bytes-like objects alike, as the encoding does) and refuses
        subclasses of str, int and float, whose calls are simply not remembered.
        It also writes any other object with a buffer (an ``array.array``) as its bytes,
        where the encoding refuses it (:class:`Unencodable`): once the same bytes were
        remembered, such an item would get their key instead of raising. Callers pass
        only items :func:`is_encodable` accepted (the plugin checks every identity's).
        """
        try:
            digest = self._entry_memo_hash.copy()
            digest.update(marshal.dumps((method, head, tag, items), _MARSHAL_VERSION))
            memo_key: bytes | None = digest.digest()
        except (ValueError, RecursionError):  # an object marshal refuses: not remembered
            memo_key = None
        else:
            key = self._entry_keys.get(memo_key)
            if key is not None:
                return key
        key = self._entry_key(method, items, head, tag)
        if memo_key is not None:
            remember(self._entry_keys, memo_key, key, ENTRY_KEY_MEMO_SIZE)
        return key

    def _entry_key(self, method: str, items: Iterable[tuple[str, Any]],
                   head: bytes | None, tag: str) -> str:
        if head is None:
            head = _ENTRY_HEADS.get(method) or b"".join(_encoded(b"entry\0", method))
        out: list[bytes] = [head]
        append = out.append
        for name, value in items:
            # Inline the usual case, a str name and a str value: the same bytes as
            # encode_value, in one formatting step instead of six calls.
            if type(name) is str and type(value) is str:
                n = name.encode("utf-8", "surrogatepass")
                v = value.encode("utf-8", "surrogatepass")
                append(b"s%d:%bs%d:%b" % (len(n), n, len(v), v))
            else:
                encode_value(name, out)
                encode_value(value, out)
        return self._key(b"".join(out), tag)

    def user_generation_key(self, kind: str, name: Any) -> str:
        """Key of the generation token of one user (``kind`` is "login" or "userid").

        Names are taken in their :func:`ldap_normal_form`: a directory's logins are
        case-insensitive (and more: RFC 4518), and invalidating ``Alice`` must also drop
        what `` alice`` or a full-width ``alice`` cached. Over-invalidation only costs a miss.
        """
        # Only exact str names are remembered: 1 == True == 1.0 would mix other types up.
        memo_key = kind + "\0" + name if type(name) is str else None
        if memo_key is not None:
            key = self._user_keys.get(memo_key)
            if key is not None:
                return key
        folded = ldap_normal_form(name) if isinstance(name, str) else name
        out: list[bytes] = [b"usergen\0"]
        encode_value(kind, out)
        encode_value(folded, out)
        key = self._key(b"".join(out))
        if memo_key is not None:
            remember(self._user_keys, memo_key, key, USER_KEY_MEMO_SIZE)
        return key

    def login_key(self, label: str, login: Any, scope: bytes = b"") -> str:
        """Key of a per-login record (``label``: ``credential-stamp``, ``failures``), by
        the login's :func:`ldap_normal_form` like the user's generation key (``scope``:
        the :func:`scope_digest` of the backend it is about, if not every backend's)."""
        folded = ldap_normal_form(login) if isinstance(login, str) else login
        out: list[bytes] = [b"login\0"]
        encode_value(label, out)
        encode_value(folded, out)
        if scope:
            encode_value(scope, out)
        tag = self.tag_of(self.user_generation_key("login", login)) if self.hash_tags else ""
        return self._key(b"".join(out), tag)

    def credential_stamp(self, login: Any, credential: Any) -> bytes:
        """A keyed digest of a login's credential: stored to tell, on the next successful
        backend answer, whether the password changed. Without the secret it tells nothing,
        and it is never a memcached key (its label is no key's)."""
        folded = ldap_normal_form(login) if isinstance(login, str) else login
        out: list[bytes] = [b"credential-stamp\0"]
        encode_value(folded, out)
        encode_value(credential, out)
        digest = binascii.b2a_base64(self.mac(b"".join(out)), newline=False).translate(_URLSAFE)
        return digest[:22]

    def namespace_generation_key(self, replica: int | None = None) -> str:
        """The namespace token's key (``replica``: one of its copies behind a proxy)."""
        if replica is None:
            return self._key(b"namespace-generation\0")
        return self._key(b"namespace-generation\0%d" % replica)

    def namespace_keys(self) -> list[str]:
        """Every key the namespace token lives under: one, or NAMESPACE_REPLICAS copies
        behind a proxy (a flush replaces them all)."""
        if not self.hash_tags:
            return [self.namespace_generation_key()]
        return [self.namespace_generation_key(i) for i in range(NAMESPACE_REPLICAS)]

    def namespace_key_for(self, route: str) -> str:
        """The copy of the namespace token that entries routed by ``route`` are stored under.

        Every request reads the namespace token with its entry. Without a proxy both are on
        the route's server. Behind twemproxy the token is one key on one backend: while that
        backend is down, twemproxy fails every multi-key get that includes it, so no request
        could use the cache. Spread over NAMESPACE_REPLICAS copies (each user reads one, chosen
        by the user's tag), a lost backend costs only the users whose copy or whose own keys
        it held, about two of every N backends' share.
        """
        if not self.hash_tags:
            return self.namespace_generation_key()
        tag = self.tag_of(route)
        return self.namespace_generation_key(zlib.crc32(tag.encode("ascii")) % NAMESPACE_REPLICAS)

    def invalidation_epoch_key(self) -> str:
        """Key of the token every invalidation replaces: near caches poll it (nearcache.py)."""
        return self._key(b"invalidation-epoch\0")

    def lock_key(self, entry_key: str) -> str:
        """The lock of an entry: behind a proxy, on the entry's backend (its tag)."""
        return self._key(b"lock\0" + entry_key.encode("ascii"), self.tag_of(entry_key))


def check_prefix(prefix: str, *, hash_tags: bool = False) -> None:
    limit = TAGGED_MAX_PREFIX_CHARS if hash_tags else MAX_PREFIX_CHARS
    if len(prefix) > limit:
        why = " behind a proxy (keys carry a hash tag)" if hash_tags else ""
        raise ConfigError(f"at most {limit} characters{why}", option="key_prefix")
    if not all(33 <= ord(c) < 127 for c in prefix):
        raise ConfigError("only printable ASCII without spaces (memcached keys)",
                          option="key_prefix")
    if hash_tags and ("{" in prefix or "}" in prefix):
        raise ConfigError("no '{' or '}' behind a proxy: twemproxy would hash on the "
                          "prefix's braces instead of the key's hash tag", option="key_prefix")

"""Sealed cache values: AES-256-GCM, bound to the key they are stored under.

Whoever can read memcached must learn nothing (userid, metadata, even whether an entry is a
denial); whoever can write it must not be able to forge, alter or move an entry. AES-GCM
gives confidentiality and integrity; using the memcached key as associated data makes a
value copied to another key fail to open. The plaintext is JSON (never pickle): even a
value that opens is only ever data.

Layout: ``version (1 byte) | nonce (12 bytes) | ciphertext+tag``. The plaintext is padded
with spaces to a multiple of ``PAD_BLOCK`` bytes, so a denial and a success (a userid, a few
items) have the same size; large metadata still shows as a larger entry. Nonces are random; a
single secret can seal some 2**32 values before its nonces risk repeating, so rotate
``secret`` long before that (a busy site's misses take years to get there).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keys import derive_subkey
from .memos import remember

FORMAT_VERSION = b"\x01"
NONCE_BYTES = 12
_TAG_BYTES = 16
_MIN_SEALED = 1 + NONCE_BYTES + _TAG_BYTES
PAD_BLOCK = 256
_BYTES_TAG = "\x00bytes"
_TUPLE_TAG = "\x00tuple"


class Unsealable(ValueError):
    """A stored value that did not open: garbage, truncated, forged or moved."""


OPENED_MEMO_ENTRIES = 4096
"""Sealed values remembered once opened (see :meth:`Sealer.open`); emptied when full."""
_OPENED_MEMO_MAX_BYTES = 4096  # larger sealed values are opened afresh each time


class Sealer:
    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(derive_subkey(secret, "seal"))
        # sealed bytes -> (the key they opened under, the record): every cache hit opens
        # the very bytes it opened last time, until the entry is stored again.
        self._opened: dict[bytes, tuple[str, dict[str, Any]]] = {}

    def seal(self, key: str, record: dict[str, Any]) -> bytes:
        plaintext = json.dumps(record, separators=(",", ":"), default=_encode_extra).encode()
        # Compact JSON never ends in a space, so the padding comes off unambiguously.
        plaintext += b" " * (-len(plaintext) % PAD_BLOCK)
        nonce = os.urandom(NONCE_BYTES)
        return FORMAT_VERSION + nonce + self._aead.encrypt(nonce, plaintext, key.encode())

    def open(self, key: str, sealed: Any) -> dict[str, Any]:
        """The record sealed in ``sealed`` under ``key``; :class:`Unsealable` if it does not
        open (forged, altered, moved from another key, garbage).

        The same bytes opened again under the same key give the same record without
        decrypting: they are compared whole (a dict lookup), so only bytes that opened
        before are taken, and only under the key they opened under. The record is then
        shared with earlier callers: read it, never change it. (A hit's decryption and JSON
        decoding cost more than the rest of its Python, ``make bench``.)
        """
        if type(sealed) is bytes:
            known = self._opened.get(sealed)
            if known is not None and known[0] == key:
                return known[1]
        record = self._open(key, sealed)
        if type(sealed) is bytes and len(sealed) <= _OPENED_MEMO_MAX_BYTES:
            remember(self._opened, sealed, (key, record), OPENED_MEMO_ENTRIES)
        return record

    def _open(self, key: str, sealed: Any) -> dict[str, Any]:
        if not isinstance(sealed, (bytes, bytearray)):
            raise Unsealable(f"not bytes but {type(sealed).__name__}")
        if len(sealed) < _MIN_SEALED or sealed[:1] != FORMAT_VERSION:
            raise Unsealable("bad format")
        nonce = sealed[1 : 1 + NONCE_BYTES]
        try:
            plaintext = self._aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], key.encode())
        except InvalidTag:
            raise Unsealable("authentication failed") from None
        # Only records holding bytes or tuples need the (slower, per-object) hook.
        decoder = _TAGGED_DECODER if b"\\u0000" in plaintext else _PLAIN_DECODER
        text = plaintext.decode("utf-8").rstrip(" ")
        # raw_decode: what we sealed has no surrounding whitespace for decode() to look for.
        record, end = decoder.raw_decode(text)
        if end != len(text) or not isinstance(record, dict):
            raise Unsealable("bad record")
        return record


def _encode_extra(value: Any) -> Any:
    """JSON has no bytes or tuples; identities may hold both (LDAP values can be bytes)."""
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES_TAG: base64.b64encode(bytes(value)).decode()}
    raise TypeError(f"{type(value).__name__} cannot be cached")


def _decode_extra(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if _BYTES_TAG in obj:
            return base64.b64decode(obj[_BYTES_TAG])
        if _TUPLE_TAG in obj:
            return tuple(obj[_TUPLE_TAG])
    return obj


_PLAIN_DECODER = json.JSONDecoder()
_TAGGED_DECODER = json.JSONDecoder(object_hook=_decode_extra)


def tag_tuples(value: Any) -> Any:
    """Mark tuples so they come back as tuples (json would turn them into lists)."""
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [tag_tuples(v) for v in value]}
    if isinstance(value, list):
        return [tag_tuples(v) for v in value]
    if isinstance(value, dict):
        return {k: tag_tuples(v) for k, v in value.items()}
    return value

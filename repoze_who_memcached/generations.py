"""Generation tokens: how an entry is invalidated without knowing its key.

Every entry records the tokens that were current when it was stored: the namespace's and its
user's. Invalidating a user replaces that user's token on every server; flushing replaces the
namespace's. Tokens are random and never reused, and an entry whose token is gone (evicted,
replaced) is never served, so an evicted token cannot bring back entries from before an
invalidation. A token is 16 characters of the URL-safe base64 alphabet: anything else found
under a token's key is garbage (written by someone else) and treated as no token.
"""

from __future__ import annotations

import secrets
from typing import Any

TOKEN_BYTES = 16
_TOKEN_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def new_token() -> bytes:
    return secrets.token_urlsafe(12).encode("ascii")  # 16 characters


def is_token(value: Any) -> bool:
    return (
        isinstance(value, bytes)
        and len(value) == TOKEN_BYTES
        and not value.translate(None, _TOKEN_ALPHABET)  # nothing left but our alphabet
    )

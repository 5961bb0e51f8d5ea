"""DN handling: RFC 4514 unescaping and comparable DN keys (for "is this DN under base_dn")."""

from __future__ import annotations

import re

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from ..options import Options

_DN_ESCAPE = re.compile(r"\\([0-9A-Fa-f]{2}|.)", re.DOTALL)


def unescape_dn_value(value: str, errors: str = "replace") -> str:
    """An RDN value with its ``\\XX`` and ``\\c`` escapes (RFC 4514) resolved.

    ``errors`` is the UTF-8 decoding policy for ``\\XX`` bytes (``strict`` raises
    UnicodeDecodeError).
    """
    if "\\" not in value:
        return value
    raw = bytearray()
    pos = 0
    for match in _DN_ESCAPE.finditer(value):
        raw += value[pos : match.start()].encode("utf-8")
        token = match.group(1)
        raw += bytes([int(token, 16)]) if len(token) == 2 else token.encode("utf-8")
        pos = match.end()
    raw += value[pos:].encode("utf-8")
    return raw.decode("utf-8", errors=errors)


def _dn_key(dn: str, opts: Options | None = None, option: str = "") -> tuple[tuple[str, str], ...]:
    """A DN as comparable ``(type, value)`` pairs: lower-cased, unescaped.

    Raises ConfigError (when ``opts`` is given) or LDAPInvalidDnError for a malformed DN.
    """
    try:
        return tuple(
            (attr.strip().lower(), unescape_dn_value(value.strip()).lower())
            for attr, value, _sep in parse_dn(dn)
        )
    except LDAPInvalidDnError as exc:
        if opts is None:
            raise
        raise opts.error(option, f"not a DN: {dn!r} ({exc})") from None

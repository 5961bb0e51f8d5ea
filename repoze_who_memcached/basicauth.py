"""HTTP Basic authentication that answers any ``Authorization`` header with 401, never 500.

A drop-in for ``repoze.who.plugins.basicauth`` (same identity keys ``login`` and
``password``, same remember/forget/challenge), written because that plugin encodes the
header as ASCII: any non-ASCII byte a client sends raises ``UnicodeEncodeError`` and the
request ends in a 500 with a traceback. Here every header that is not a well-formed Basic
credential is simply "no identity", so the client is challenged (401):

* headers longer than :data:`MAX_AUTHORIZATION_BYTES` are not even decoded;
* the token must be strict base64 (RFC 4648 alphabet and padding, nothing else);
* the credentials must hold a ``:`` and a non-empty login;
* login and password are decoded as UTF-8 (what curl and browsers send), falling back to
  latin-1 (what WebTest sends), as repoze.who does; control characters (NUL, CR, LF, DEL,
  C1...) in either refuse the whole credential, so they never reach a backend or a log.

``identify`` never raises, whatever the environ holds.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from repoze.who.interfaces import IChallenger, IIdentifier
from webob.exc import HTTPUnauthorized
from zope.interface import implementer

from .errors import ConfigError

# Longer headers are refused unread: real Basic credentials are far shorter, and decoding
# megabytes on every request is work an attacker could make us do for free.
MAX_AUTHORIZATION_BYTES = 8192

# C0 controls, DEL and C1 controls: no one types them in a login or password.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")
# What a realm may hold: printable ASCII (it goes into a quoted-string of a header).
try:
    binascii.a2b_base64(b"", strict_mode=True)
    _STRICT_MODE = True
except TypeError:  # Python 3.10
    _STRICT_MODE = False
_REALM_CHARACTERS = re.compile(r"[\x20-\x7e]*")
_WHITESPACE = b" \t"
_WHITESPACE_TEXT = " \t"


@implementer(IIdentifier, IChallenger)
class BasicAuthPlugin:
    """Identify from ``Authorization: Basic ...``; challenge with ``WWW-Authenticate``."""

    def __init__(self, realm: str) -> None:
        if not isinstance(realm, str) or not _REALM_CHARACTERS.fullmatch(realm):
            raise ConfigError("option 'realm': printable ASCII only (it is sent in a header)")
        self.realm = realm
        quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
        # Built once: every challenge and forget sends the same header.
        self._www_authenticate = ("WWW-Authenticate", f'Basic realm="{quoted}"')

    # IIdentifier
    def identify(self, environ: dict[str, Any]) -> dict[str, str] | None:
        try:
            return parse_basic_credentials(environ.get("HTTP_AUTHORIZATION"))
        except Exception:  # a header must never become a 500, whatever goes wrong
            return None

    # IIdentifier
    def remember(self, environ: dict[str, Any], identity: dict[str, Any]) -> None:
        """Nothing to do: the browser resends the credentials the user typed."""
        return None

    # IIdentifier
    def forget(self, environ: dict[str, Any], identity: dict[str, Any]) -> list[tuple[str, str]]:
        return [self._www_authenticate]

    # IChallenger
    def challenge(self, environ: dict[str, Any], status: str,
                  app_headers: list[tuple[str, str]],
                  forget_headers: list[tuple[str, str]]) -> HTTPUnauthorized:
        headers = [self._www_authenticate]
        if self._www_authenticate not in forget_headers:
            headers += forget_headers
        return HTTPUnauthorized(headers=headers)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} realm={self.realm!r}>"


def parse_basic_credentials(header: Any) -> dict[str, str] | None:
    """``{"login": ..., "password": ...}`` from an ``Authorization`` value, or None.

    ``header`` is what a WSGI server puts in ``HTTP_AUTHORIZATION``: a str holding the raw
    bytes as latin-1 (PEP 3333); bytes are accepted too. Anything else is None.
    """
    if type(header) is str and header.isascii():
        # The usual case, on every request: an ASCII header with ASCII credentials, taken
        # apart as text (base64 decoding takes ASCII text as well as bytes), in one frame.
        if len(header) > MAX_AUTHORIZATION_BYTES:
            return None
        scheme, separator, token = header.strip(_WHITESPACE_TEXT).partition(" ")
        if not separator or (scheme != "Basic" and scheme.lower() != "basic"):
            return None
        token = token.strip(_WHITESPACE_TEXT)
        try:
            credentials = (binascii.a2b_base64(token, strict_mode=True) if _STRICT_MODE
                           else _strict_b64decode(token))
        except (binascii.Error, ValueError):
            return None
        if not credentials.isascii():
            return _credentials_from(credentials)
        text = credentials.decode("ascii")
        if not text.isprintable():  # in ASCII: exactly the control characters
            return None
        login, colon, password = text.partition(":")
        if not colon or not login:
            return None
        return {"login": login, "password": password}
    if isinstance(header, str):
        if len(header) > MAX_AUTHORIZATION_BYTES:
            return None
        try:
            raw = header.encode("latin-1")
        except UnicodeEncodeError:  # not what a WSGI server hands over
            return None
    elif isinstance(header, bytes):
        raw = header
    else:
        return None
    if not raw or len(raw) > MAX_AUTHORIZATION_BYTES:
        return None
    scheme, separator, token = raw.strip(_WHITESPACE).partition(b" ")
    if not separator or scheme.lower() != b"basic":
        return None
    try:
        credentials = _strict_b64decode(token.strip(_WHITESPACE))
    except (binascii.Error, ValueError):
        return None
    return _credentials_from(credentials)


def _credentials_from(credentials: bytes) -> dict[str, str] | None:
    """The login and password of decoded Basic credentials (``login:password``), or None.
    (ASCII credentials in an ASCII header, the usual case, are taken apart inline above.)"""
    login_bytes, colon, password_bytes = credentials.partition(b":")
    if not colon or not login_bytes:
        return None
    login = _decode(login_bytes)
    password = _decode(password_bytes)
    if _CONTROL_CHARACTERS.search(login) or _CONTROL_CHARACTERS.search(password):
        return None
    return {"login": login, "password": password}


if _STRICT_MODE:
    def _strict_b64decode(token: bytes) -> bytes:
        """Base64 with no character outside the alphabet, padding only at the end."""
        return binascii.a2b_base64(token, strict_mode=True)
else:  # Python 3.10: the same check by a regular expression
    def _strict_b64decode(token: bytes) -> bytes:
        """Base64 with no character outside the alphabet, padding only at the end."""
        return base64.b64decode(token, validate=True)


def _decode(value: bytes) -> str:
    """UTF-8 when it is valid UTF-8 (curl, browsers), else latin-1 (WebTest), as repoze.who."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def make_plugin(realm: str = "basic") -> BasicAuthPlugin:
    """Factory for who.ini (``use = repoze_who_memcached.basicauth:make_plugin``) and the
    filter's ``basicauth`` built-in; same signature as repoze.who's."""
    return BasicAuthPlugin(realm)


__all__ = ["MAX_AUTHORIZATION_BYTES", "BasicAuthPlugin", "make_plugin", "parse_basic_credentials"]

"""The LDAP authenticator: search for the login's entry, then bind as it (see the package
docstring); :func:`make_authenticator` at the bottom, as repoze.who's plugins do."""

from __future__ import annotations

from typing import Any

from repoze.who.interfaces import IAuthenticator
from zope.interface import implementer

from ..options import Options
from .directory import _prepare_password
from .options import DEFAULT_MAX_PASSWORD_BYTES, LDAP_DN_KEY, _finish, _parse_common, _Settings
from .plugin import _LdapPlugin


@implementer(IAuthenticator)
class LdapAuthenticator(_LdapPlugin):
    """Search-then-bind authentication; see the package docstring. Made by
    :func:`make_authenticator`."""

    def __init__(self, settings: _Settings, password_item: str,
                 max_password_bytes: int = DEFAULT_MAX_PASSWORD_BYTES) -> None:
        super().__init__(settings)
        self.login_item = settings.login_item
        self.password_item = password_item
        self.max_password_bytes = max_password_bytes
        attr = settings.userid_attribute
        self._search_attributes = [attr] if attr else []

    def authenticate(self, environ: dict[str, Any], identity: dict[str, Any]) -> str | None:
        """The userid (DN or ``userid_attribute``) if login and password are good, else None.

        Whatever the identity holds is answered (None for anything odd); raises
        BackendUnavailable only if the directory cannot be asked.
        """
        userid = self._counted_call(self._authenticate, identity, None)
        self._counted(userid is not None)
        return userid

    def _answer_settings(self) -> dict[str, Any]:
        return {"password_item": self.password_item,
                "max_password_bytes": self.max_password_bytes}

    def _authenticate(self, identity: dict[str, Any]) -> str | None:
        login = identity.get(self.login_item)
        password = identity.get(self.password_item)
        s = self.settings
        # An empty password would make an "unauthenticated" bind that many servers accept
        # (RFC 4513 5.1.2): never send one. Size first: nothing below costs more than this.
        if not isinstance(login, str) or not isinstance(password, str):
            return None
        if not login or not password:
            return None
        if not self._text_within(login, s.max_login_bytes):
            self._refuse("login-size", "LDAP: a login over max_login_bytes (%d) or not UTF-8; "
                         "refusing it", s.max_login_bytes)
            return None
        if not self._text_within(password, self.max_password_bytes):
            self._refuse("password-size", "LDAP: a password over max_password_bytes (%d) or "
                         "not UTF-8; refusing it", self.max_password_bytes)
            return None
        prepared = _prepare_password(password)
        if prepared is None:
            self._refuse("saslprep", "LDAP: a password SASLprep (RFC 4013) refuses (control, "
                         "private-use or non-characters, or mixed directions); refusing it")
            return None
        entries = self.directory.search(
            s.base_dn, s.filter.render({"login": login}), s.scope, self._search_attributes, 2
        )
        if len(entries) != 1:
            if len(entries) > 1:
                self._warn.warning("ambiguous", "LDAP: several entries match one login under "
                                   "%s; refusing it (make the filter unique)", s.base_dn)
            return None
        entry = entries[0]
        if not entry.dn:
            return None
        userid: str | None = entry.dn
        if s.userid_attribute:
            userid = _pick_userid(entry.texts(s.userid_attribute), login)
            if userid is None:
                self._warn.warning("no-userid", "LDAP: %s has no usable %s; refusing the login",
                                   entry.dn, s.userid_attribute)
                return None
        if not self.directory.check_password(entry.dn, prepared):
            return None
        identity[LDAP_DN_KEY] = entry.dn
        return userid


def _pick_userid(values: list[str], login: str) -> str | None:
    """The userid among an entry's values: the one matching the login, else the first."""
    if not values:
        return None
    folded = login.casefold()
    for value in values:
        if value.casefold() == folded:
            return value
    return values[0]


def make_authenticator(**options: Any) -> LdapAuthenticator:
    """Build the LDAP authenticator from ini-style string options.

    Options (all strings, as repoze.who's config passes them): ``url`` (required; several
    separated by spaces are tried in order), ``base_dn`` (required), ``bind_dn`` and
    ``bind_password`` or ``bind_password_file`` (else searches are anonymous), ``filter``
    (default ``(uid={login})``), ``scope`` (base, one, sub; default sub), ``start_tls``,
    ``tls_ca_file``, ``tls_verify`` (default true), ``connect_timeout`` (default 3) and
    ``timeout`` (default 5; whole seconds), ``retry_after`` (seconds a directory that
    failed slowly is not asked; default 2), ``userid_attribute`` (default: the userid is
    the DN), ``pool_size`` (idle service connections kept; default 4), ``login_item`` and
    ``password_item`` (identity keys; default ``login``, ``password``),
    ``max_login_bytes`` (default 256) and ``max_password_bytes`` (default 1024): longer
    values (UTF-8) are refused before any work.
    An unknown option or a bad value raises ConfigError naming it.
    """
    opts = Options(options, "ldap authenticator")
    settings = _parse_common(opts)
    password_item = opts.str("password_item", "password") or "password"
    max_password_bytes = opts.int("max_password_bytes", DEFAULT_MAX_PASSWORD_BYTES, minimum=1,
                                  maximum=65536)
    _finish(opts, settings)
    return LdapAuthenticator(settings, password_item, max_password_bytes)

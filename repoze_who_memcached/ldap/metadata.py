"""The LDAP metadata provider: copies attributes and group names of the user's entry into
the identity; :func:`make_metadata_provider` at the bottom, as repoze.who's plugins do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from repoze.who.interfaces import IMetadataProvider
from zope.interface import implementer

from ..errors import ConfigError
from ..options import Options
from .dn import _dn_key
from .options import (
    DEFAULT_GROUP_FILTER,
    DEFAULT_GROUPS_ITEM,
    LDAP_DN_KEY,
    MAX_DN_BYTES,
    SCOPES,
    _attribute_name,
    _check_item,
    _FilterTemplate,
    _finish,
    _parse_attribute_map,
    _parse_common,
    _Settings,
)
from .plugin import _LdapPlugin
from .results import _Entry


@dataclass(frozen=True)
class _GroupSettings:
    base_dn: str
    filter: _FilterTemplate
    scope: str
    attribute: str
    item: str


@implementer(IMetadataProvider)
class LdapMetadataProvider(_LdapPlugin):
    """Copies attributes (and group names) of the user's entry into the identity.

    Made by :func:`make_metadata_provider`. The entry is found by ``identity['ldap.dn']``
    when our authenticator (or a cache of it) put it there, else by the userid: read as a DN
    when no ``userid_attribute`` is set, otherwise searched for with ``userid_filter``.
    A partial search result (the server's size limit) adds nothing: no metadata is better
    than a group list with groups missing.
    """

    def __init__(
        self,
        settings: _Settings,
        attributes: tuple[tuple[str, str], ...],
        list_attributes: frozenset[str],
        missing: str,
        userid_filter: _FilterTemplate,
        groups: _GroupSettings | None,
    ) -> None:
        super().__init__(settings)
        self.attributes = attributes
        self.list_attributes = list_attributes
        self.missing = missing
        self.userid_filter = userid_filter
        self.groups = groups
        self._ldap_attributes = list(dict.fromkeys(attr for attr, _ in attributes))

    def add_metadata(self, environ: dict[str, Any], identity: dict[str, Any]) -> None:
        """Add the configured items; does nothing for an unknown user or odd input.

        Raises BackendUnavailable only if the directory cannot be asked.
        """
        self._counted(self._counted_call(self._add_metadata, identity, False))

    def _answer_settings(self) -> dict[str, Any]:
        g = self.groups
        return {
            "attributes": [list(pair) for pair in self.attributes],
            "list_attributes": sorted(self.list_attributes),
            "missing": self.missing,
            "userid_filter": self.userid_filter.text,
            "groups": None if g is None else {
                "base_dn": g.base_dn, "filter": g.filter.text, "scope": g.scope,
                "attribute": g.attribute, "item": g.item,
            },
        }

    def _bases(self) -> list[tuple[str, str]]:
        bases = super()._bases()
        if self.groups is not None:
            bases.append(("group_base_dn", self.groups.base_dn))
        return bases

    def _add_metadata(self, identity: dict[str, Any]) -> bool:
        userid = identity.get("repoze.who.userid")
        # A userid is a login-like value when userid_attribute is set, else a DN (which
        # may well be longer than any login).
        limit = self.settings.max_login_bytes if self.settings.userid_attribute else MAX_DN_BYTES
        if not self._text_within(userid, limit):
            return False
        entry = self._find_entry(identity, userid)
        if entry is None:
            return False
        values: dict[str, Any] = {}
        for attr, item in self.attributes:
            texts = entry.texts(attr)
            as_list = attr.lower() in self.list_attributes
            if texts:
                values[item] = texts if as_list or len(texts) > 1 else texts[0]
            elif self.missing == "none":
                values[item] = None
            elif self.missing == "empty":
                values[item] = [] if as_list else ""
        if self.groups is not None:
            names = self._groups(entry.dn, userid, identity)
            if names is not None:
                values[self.groups.item] = names
        identity.update(values)
        return True

    def _find_entry(self, identity: dict[str, Any], userid: str) -> _Entry | None:
        s = self.settings
        dn = identity.get(LDAP_DN_KEY)
        if not isinstance(dn, str) or not dn:
            dn = userid if s.userid_attribute is None else None
        if dn is not None:
            if not self._text_within(dn, MAX_DN_BYTES) or not self._within_base(dn):
                return None
            if not self._ldap_attributes:
                return _Entry(dn, {})  # nothing to read; groups need only the DN
            found = self.directory.search(dn, "(objectClass=*)", "base", self._ldap_attributes, 0)
        else:
            found = self.directory.search(
                s.base_dn,
                self.userid_filter.render({"userid": userid, "login": userid}),
                s.scope,
                self._ldap_attributes,
                2,
            )
        if len(found) != 1:
            return None
        return found[0]

    def _groups(self, dn: str, userid: str, identity: dict[str, Any]) -> list[str] | None:
        g = self.groups
        assert g is not None
        login = identity.get(self.settings.login_item)
        if "login" in g.filter.fields and not self._text_within(login,
                                                                 self.settings.max_login_bytes):
            return None
        values = {"dn": dn, "userid": userid, "login": login if isinstance(login, str) else ""}
        found = self.directory.search(
            g.base_dn, g.filter.render(values), g.scope, [g.attribute], 0
        )
        names = {texts[0] for entry in found if (texts := entry.texts(g.attribute))}
        return sorted(names)


def make_metadata_provider(**options: Any) -> LdapMetadataProvider:
    """Build the LDAP metadata provider from ini-style string options.

    Takes the connection and search options of :func:`make_authenticator` (but not
    ``password_item``), plus: ``attributes`` (``mail=email cn``: copy ``mail`` as
    ``email`` and ``cn`` as ``cn``), ``list_attributes`` (attributes always given as lists;
    others are a string when they have one value, a list when several),
    ``missing`` (``omit``, the default; ``none``; or ``empty``: "" or []),
    ``userid_filter`` (how to find the entry by userid when there is no DN; default: the
    ``filter``, with ``{login}`` standing for the userid; placeholders ``{userid}``,
    ``{login}``), and for groups ``group_base_dn`` (enables them), ``group_filter``
    (default ``(&(objectClass=groupOfNames)(member={dn}))``; placeholders ``{dn}``,
    ``{userid}``, ``{login}``), ``group_scope`` (default sub), ``group_attribute``
    (default cn) and ``groups_item`` (default ``groups``). ``max_login_bytes`` (default
    256) bounds the login and, with ``userid_attribute``, the userid it looks up (a DN
    userid is bounded by :data:`MAX_DN_BYTES`).
    """
    opts = Options(options, "ldap metadata provider")
    settings = _parse_common(opts)
    attributes = _parse_attribute_map(opts, opts.list("attributes", ()) or [])
    list_attributes = frozenset(
        _attribute_name(opts, "list_attributes", name).lower()
        for name in opts.list("list_attributes", ()) or []
    )
    known = {attr.lower() for attr, _ in attributes}
    for name in sorted(list_attributes - known):
        raise opts.error("list_attributes", f"{name!r} is not one of the attributes")
    missing = opts.choice("missing", "omit", ("omit", "none", "empty"))
    userid_filter_text = opts.str("userid_filter") or settings.filter.text
    userid_filter = _FilterTemplate(userid_filter_text, "userid_filter", ("userid", "login"), opts)
    groups = None
    group_base_dn = opts.str("group_base_dn") or None
    group_filter = opts.str("group_filter") or DEFAULT_GROUP_FILTER
    group_scope = opts.choice("group_scope", "sub", SCOPES)
    group_attribute = _attribute_name(opts, "group_attribute", opts.str("group_attribute") or "cn")
    groups_item = opts.str("groups_item") or DEFAULT_GROUPS_ITEM
    if group_base_dn is not None:
        _dn_key(group_base_dn, opts, "group_base_dn")
        _check_item(opts, "groups_item", groups_item)
        if groups_item in {item for _, item in attributes}:
            raise opts.error("groups_item", f"{groups_item!r} is also an attribute's name")
        groups = _GroupSettings(
            base_dn=group_base_dn,
            filter=_FilterTemplate(group_filter, "group_filter", ("dn", "userid", "login"), opts),
            scope=group_scope,
            attribute=group_attribute,
            item=groups_item,
        )
    _finish(opts, settings)
    if not attributes and groups is None:
        raise ConfigError(
            "ldap metadata provider: nothing to do: give 'attributes' and/or 'group_base_dn'"
        )
    return LdapMetadataProvider(
        settings, attributes, list_attributes, missing, userid_filter, groups
    )

"""Pyramid 2 over repoze.who: a security policy, and ``includeme`` that builds the stack.

``pyramid_who`` (0.3), the old bridge, cannot be imported on Python 3 and predates Pyramid
2's single ``ISecurityPolicy``; this module replaces it. The usual way in::

    config.include("repoze_who_memcached.pyramid")

reads the app's ``who.*`` settings (the options our PasteDeploy filter takes, without
their ``who.`` prefix), or ``who.config_file`` (a who.ini), builds the whole repoze.who stack
with :mod:`repoze_who_memcached.pipeline` (so a bad option fails at start-up, naming it),
and sets a :class:`WhoSecurityPolicy` plus a forbidden view that challenges anonymous users
through repoze.who's challengers (a 401 with basic auth) and answers 403 to users who are
logged in but not allowed.

No repoze.who middleware is involved: the policy asks the API factory itself, once per
request, the first time Pyramid wants to know who is there. An identity that a repoze.who
middleware in front of Pyramid already found (``repoze.who.identity`` in the environ) is
used as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pyramid.authorization import ACLHelper, Authenticated, Everyone
from pyramid.httpexceptions import HTTPForbidden
from pyramid.interfaces import ISecurityPolicy
from pyramid.request import Request
from pyramid.response import Response
from zope.interface import implementer

from .errors import ConfigError
from .pipeline import PrebuiltAPIFactory, build_middleware_factory

logger = logging.getLogger("repoze_who_memcached")

SETTINGS_PREFIX = "who."
# Settings under ``who.`` that the policy takes itself; every other ``who.*`` setting goes
# to the stack builder (which refuses what it does not know).
POLICY_SETTINGS = {
    "groups_item": "groups",
    "group_prefix": "group:",
}
SETTINGS_SECTION = "Pyramid settings"
API_FACTORY_KEY = "repoze_who_memcached.api_factory"

# Where the policy keeps its answer for the request (a miss is remembered too: None).
_IDENTITY_KEY = "repoze_who_memcached.pyramid.identity"


@implementer(ISecurityPolicy)
class WhoSecurityPolicy:
    """A Pyramid ``ISecurityPolicy`` that asks repoze.who who is there.

    ``api_factory`` is any repoze.who API factory (``environ -> API``): ours from
    :func:`api_factory_from_settings`, or ``repoze.who.api.APIFactory`` built by hand.
    Principals for ACLs are ``Everyone``; then, once authenticated, ``Authenticated``, the
    userid, and ``group_prefix + name`` for each name in the identity's ``groups_item``
    (what our LDAP metadata provider adds). A userid that starts with ``group_prefix``
    does not become a principal: a user named ``group:admins`` must not pass for a member.
    """

    def __init__(self, api_factory: Callable[[dict], Any], *, groups_item: str = "groups",
                 group_prefix: str = "group:", acl_helper: ACLHelper | None = None) -> None:
        if not group_prefix:
            raise ConfigError("must not be empty: groups would pass for userids",
                              option="group_prefix")
        self.api_factory = api_factory
        self.groups_item = groups_item
        self.group_prefix = group_prefix
        self.acl_helper = acl_helper or ACLHelper()

    def api(self, request: Request) -> Any:
        """The request's repoze.who API (made once per request by the factory)."""
        return self.api_factory(request.environ)

    def identity(self, request: Request) -> dict | None:
        """The repoze.who identity (userid, metadata), or None; computed once per request."""
        environ = request.environ
        if _IDENTITY_KEY in environ:
            return environ[_IDENTITY_KEY]
        identity = environ.get("repoze.who.identity")  # a middleware in front found it
        if not identity:
            identity = self.api(request).authenticate() or None
        environ[_IDENTITY_KEY] = identity
        return identity

    def authenticated_userid(self, request: Request) -> str | None:
        identity = self.identity(request)
        return identity.get("repoze.who.userid") if identity else None

    def principals(self, request: Request) -> list[str]:
        """``Everyone``; for a logged-in user also ``Authenticated``, the userid, groups."""
        principals = [Everyone]
        identity = self.identity(request)
        userid = identity.get("repoze.who.userid") if identity else None
        if userid is None:
            return principals
        principals.append(Authenticated)
        if not str(userid).startswith(self.group_prefix):
            principals.append(userid)
        principals += [self.group_prefix + name for name in
                       _group_names(identity.get(self.groups_item))]
        return principals

    def permits(self, request: Request, context: Any, permission: str) -> Any:
        return self.acl_helper.permits(context, self.principals(request), permission)

    def remember(self, request: Request, userid: str, **kw: Any) -> list[tuple[str, str]]:
        """Headers from every identifier that remembers (auth_tkt's cookie, say).

        ``identity=`` passes a whole repoze.who identity (e.g. from ``API.login``);
        otherwise the request's own identity when it is this user's, else a bare
        ``{"repoze.who.userid": userid}`` with the keyword arguments added.
        """
        identity = kw.pop("identity", None)
        if identity is None:
            current = self.identity(request)
            if current and current.get("repoze.who.userid") == userid:
                identity = current
            else:
                identity = {"repoze.who.userid": userid, **kw}
        headers: list[tuple[str, str]] = []
        for _name, identifier in self.api(request).identifiers:
            headers += identifier.remember(request.environ, identity) or []
        return headers

    def forget(self, request: Request, **kw: Any) -> list[tuple[str, str]]:
        """Headers from every identifier that forgets; the request is anonymous after it."""
        headers = list(self.api(request).logout())
        request.environ[_IDENTITY_KEY] = None
        return headers


def _group_names(value: Any) -> list[str]:
    """Group names from an identity item: a list of names, or one name (never a char list)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        return [name for name in value if isinstance(name, str)]
    return []


def challenge_view(context: Any, request: Request) -> Any:
    """Pyramid's forbidden view: anonymous users get repoze.who's challenge, others a 403.

    The challenge is whatever the configured challengers answer (a 401 with
    ``WWW-Authenticate`` from basic auth, a redirect to a login form...); with no
    challenger willing, a plain 403.
    """
    policy = request.registry.queryUtility(ISecurityPolicy)
    if isinstance(policy, WhoSecurityPolicy) and policy.authenticated_userid(request) is None:
        challenger_app = policy.api(request).challenge("401 Unauthorized")
        if challenger_app is not None:
            return request.get_response(challenger_app)
    return context if isinstance(context, Response) else HTTPForbidden()


def split_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``who.*`` settings without the prefix: (the stack's options, the policy's options)."""
    stack: dict[str, Any] = {}
    policy: dict[str, Any] = {}
    for key, value in settings.items():
        if key.startswith(SETTINGS_PREFIX):
            name = key[len(SETTINGS_PREFIX):]
            (policy if name in POLICY_SETTINGS else stack)[name] = value
    return stack, policy


def api_factory_from_settings(settings: Mapping[str, Any]) -> PrebuiltAPIFactory:
    """The repoze.who API factory that the app's ``who.*`` settings describe.

    The same options, checks and messages as our PasteDeploy filter
    (:func:`repoze_who_memcached.pipeline.build_middleware_factory`), but an error names the
    setting as the app has it: ``Pyramid settings: unknown option 'who.tll'``. Errors in
    the who.ini of ``who.config_file`` name its file and section.
    """
    stack, _ = split_settings(settings)
    if not stack:
        raise ConfigError(
            "no who.* settings: set who.config_file (a who.ini) or the stack's options "
            "(who.authenticator, who.secret_file, ...)", section=SETTINGS_SECTION)
    try:
        middleware_factory = build_middleware_factory({}, stack)
    except ConfigError as exc:
        if exc.section and not exc.section.startswith("[filter]"):
            raise  # a who.ini's own file and section
        option = f"{SETTINGS_PREFIX}{exc.option}" if exc.option else None
        raise ConfigError(exc.problem, option=option, section=SETTINGS_SECTION) from None
    # The middleware is never called: built only for the API factory it holds, made and
    # verified once here (plugins, registries), so requests pay none of it.
    return middleware_factory(_never_called).api_factory


def _never_called(environ: dict, start_response: Callable) -> Any:
    raise RuntimeError("repoze_who_memcached.pyramid uses the API factory, not a middleware")


def includeme(config: Any) -> None:
    """``config.include("repoze_who_memcached.pyramid")``: the stack, the policy, the
    challenge. Also ``request.who_api``, the request's repoze.who API (for a login view:
    ``request.who_api.login(credentials)``)."""
    settings = config.get_settings()
    api_factory = api_factory_from_settings(settings)
    _, policy_settings = split_settings(settings)
    options = {name: str(policy_settings.get(name, default))
               for name, default in POLICY_SETTINGS.items()}
    try:
        policy = WhoSecurityPolicy(api_factory, **options)
    except ConfigError as exc:
        raise ConfigError(exc.problem, option=f"{SETTINGS_PREFIX}{exc.option}",
                          section=SETTINGS_SECTION) from None
    config.registry[API_FACTORY_KEY] = api_factory
    config.set_security_policy(policy)
    config.add_forbidden_view(challenge_view)
    config.add_request_method(policy.api, "who_api", reify=True)


__all__ = [
    "WhoSecurityPolicy",
    "api_factory_from_settings",
    "challenge_view",
    "includeme",
    "split_settings",
]

"""An LDAP authenticator and metadata provider for repoze.who, on ldap3.

Why our own: the LDAP plugins one can install either do not run on Python 3
(``repoze.who.plugins.ldap``) or are unsafe (``who_ldap`` 4: a wrong password raises,
DNs are built from unescaped logins, the password is sent before STARTTLS, and
``start_tls = false`` reads as true). This package is the backend our cache plugin wraps.

How it authenticates (search, then bind):

1. A *service connection* (bound as ``bind_dn``, or anonymously) searches ``base_dn`` with
   ``filter``, the login filter-escaped into it. Service connections are kept in a small
   pool, because opening and binding one costs as much as the whole rest of the work.
2. Exactly one entry must match: none or several is a "no" (several entries never become a
   guess at who was meant).
3. A *new, short-lived connection* binds as that entry's DN with the given password and is
   closed at once, so one user's bind can never leak into another request.

Every "no" returns None: a wrong password, an unknown user, an ambiguous or partial search
(several entries, sizeLimitExceeded), and whatever bytes a client sends as login or password
(empty, too long, refused by SASLprep, or making a filter ldap3 cannot encode). Only a
directory that cannot be asked (down, hung, refusing TLS, rejecting the service account)
raises :class:`~repoze_who_memcached.errors.BackendUnavailable`: that is not a wrong
password, and the cache plugin treats it differently (it never caches it as a denial, and
may serve a stale entry). So no client input can make the plugin look like a failing
directory, open the circuit breaker for everybody, or have the cache serve stale entries.
Passwords never appear in messages, logs or ``repr()``.

ldap3 facts this package is built around (checked with ldap3 2.9.1):

* ``Server(get_info=SCHEMA)`` (the default) reads the schema on every new connection
  (~14 ms); we use ``get_info=NONE``.
* A ``Server`` object keeps per-address state: after one refused connect it reports
  "invalid server address" without trying for 5 s (``RESET_AVAILABILITY_TIMEOUT``), and
  open/close of connections in other threads race on ``current_address``. ``ServerPool``
  with ``active=True`` loops forever (sleeping 10 s per cycle) when every server is down,
  and never forgets a connection it has seen (a leak with short-lived connections). So we
  build a fresh ``Server`` per connection (~10 µs; its arguments are computed once) and do
  the FIRST-strategy failover ourselves, remembering a failed server for
  :data:`SERVER_RETRY_SECONDS`.
* Timeouts must be ints; an empty password raises ``LDAPPasswordIsMandatoryError``; a
  search that hits ``size_limit`` returns True with result code 4 and the entries.
* A simple-bind password given as text goes through SASLprep (RFC 4013), which refuses
  control characters, private-use code points, non-characters and mixed-direction text
  (``LDAPSASLPrepError``, nothing sent); bytes are sent as they are. We run SASLprep
  ourselves, once, before any search, and bind with its bytes.
* Filter values are ``str.strip()``-ed (``(uid=*{login})`` with a login of spaces would
  become a presence filter), and an empty substring piece makes pyasn1 fail to encode the
  request: we escape every whitespace character (``\\20``), so the value is sent as given
  (slapd then treats spaces as insignificant, RFC 4518).
* After a bind, ``Connection.request`` keeps the bind request, password included, and
  ``repr()`` of a Connection shows ``password``: we clear both as soon as a bind returns.

Layout (each module imports only the ones above it):

* :mod:`.dn`: DN unescaping (RFC 4514) and comparable DN keys;
* :mod:`.options`: option parsing (strict, once at load time) into ``_Settings``, the
  filter templates, the defaults;
* :mod:`.counters`: ``LdapCounters``, the per-plugin event counts;
* :mod:`.results`: what result codes and failures mean (a "no", a partial result, a
  broken directory), search entries, error texts with secrets blotted out;
* :mod:`.breaker`: the circuit breaker (``retry_after``);
* :mod:`.directory`: failover, the service-connection pool, searches and user binds;
* :mod:`.plugin`: what both plugins share (health check, cache fingerprint, refusals);
* :mod:`.authenticator` and :mod:`.metadata`: the two plugins, each with its ``make_*``
  factory at the bottom. Both factories are re-exported here: the entry points and
  ``use = repoze_who_memcached.ldap:make_authenticator`` name this package.
"""

from __future__ import annotations

# The public names (``__all__``), then, with ``as`` (re-exported), names reachable here as
# they were when this package was one module: tests and tools import some of them.
from ..errors import BackendUnavailable as BackendUnavailable
from ..errors import ConfigError as ConfigError
from .authenticator import LdapAuthenticator, make_authenticator
from .authenticator import _prepare_password as _prepare_password
from .breaker import _Breaker as _Breaker
from .counters import LdapCounters
from .directory import _Directory as _Directory
from .dn import _dn_key as _dn_key
from .dn import unescape_dn_value as unescape_dn_value
from .metadata import LdapMetadataProvider, make_metadata_provider
from .options import DEFAULT_FILTER as DEFAULT_FILTER
from .options import DEFAULT_GROUP_FILTER as DEFAULT_GROUP_FILTER
from .options import DEFAULT_GROUPS_ITEM, LDAP_DN_KEY
from .options import DEFAULT_MAX_LOGIN_BYTES as DEFAULT_MAX_LOGIN_BYTES
from .options import DEFAULT_MAX_PASSWORD_BYTES as DEFAULT_MAX_PASSWORD_BYTES
from .options import DEFAULT_RETRY_AFTER as DEFAULT_RETRY_AFTER
from .options import MAX_DN_BYTES as MAX_DN_BYTES
from .options import REFUSAL_LOG_INTERVAL as REFUSAL_LOG_INTERVAL
from .options import SERVER_RETRY_SECONDS as SERVER_RETRY_SECONDS
from .options import SLOW_FAILURE_SHARE as SLOW_FAILURE_SHARE
from .options import _FilterTemplate as _FilterTemplate
from .options import _Settings as _Settings
from .plugin import FINGERPRINT_VERSION as FINGERPRINT_VERSION
from .results import _Entry as _Entry
from .results import _Refused as _Refused

__all__ = [
    "DEFAULT_GROUPS_ITEM",
    "LDAP_DN_KEY",
    "LdapAuthenticator",
    "LdapCounters",
    "LdapMetadataProvider",
    "make_authenticator",
    "make_metadata_provider",
]

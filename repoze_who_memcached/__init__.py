"""repoze_who_memcached: cache a repoze.who authenticator's and metadata provider's answers
in memcached, keyed by HMAC and sealed with AES-GCM.

The file list is the architecture:

* ``plugin``      - the repoze.who plugin: a thin adapter over the region, and its ini factory
* ``region``      - the cache core: get-or-create, single flight, locks, stale serving, the
  near cache's epochs, invalidation; it knows nothing of repoze.who
* ``rotation``, ``refresh``, ``credentials`` - secret rotation, refresh-ahead and the
  latest password wins, mixed into the region (``records``: what they share)
* ``shield``      - the lockout shield (``max_failures``)
* ``connection``  - our own memcached connection for the hit path
* ``basicauth``   - our Basic identifier and challenger
* ``pyramid``     - Pyramid 2's security policy and ``includeme``
* ``generations`` - the tokens that invalidate entries without knowing their keys
* ``nearcache``   - answers kept in process memory (``local_ttl``)
* ``keys``      - HMAC cache keys over a canonical encoding of identity items
* ``sealing``   - AES-GCM sealed values bound to their key (never pickle)
* ``backends``  - the narrow interface to python-memcached / pymemcache (never raises)
* ``counters``  - counters, rate-limited warnings, Prometheus export
* ``options``   - strict ini-string parsing shared by every factory
* ``ldap``      - our LDAP authenticator and metadata provider (ldap3 or python-ldap)
* ``pipeline``  - PasteDeploy filter and who.ini loading that fail loudly
* ``demo``      - the demo WSGI app of ``make serve``
* ``cli``       - the ``repoze-who-memcached`` console script
* ``testing``   - private memcached and slapd servers for tests (yours too)
* ``scaffold``  - the ``paster create`` template
"""

from .errors import BackendUnavailable, ConfigError
from .plugin import CachingPlugin, make_plugin

__all__ = ["BackendUnavailable", "CachingPlugin", "ConfigError", "make_plugin"]
__version__ = "1.0.0.dev0"

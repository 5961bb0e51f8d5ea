"""Wrapped plugins for cache tests: pure logic, so they may be simple Python objects.

They stand for the slow backend (LDAP) in tests whose subject is the cache; the cache itself
is always a real memcached.
"""

from __future__ import annotations

import threading
import time

from repoze.who.interfaces import IAuthenticator, IMetadataProvider
from zope.interface import implementer

from repoze_who_memcached import BackendUnavailable

USERS = {"alice": "wonderland", "bob": "builder", "zoë": "pässwörd", "Ünï çødé": "ключ"}


@implementer(IAuthenticator)
class CountingAuthenticator:
    """Accepts USERS; counts calls; adds ``email`` and ``dn`` items like an LDAP plugin."""

    def __init__(self, users=None, delay: float = 0.0):
        self.users = dict(users or USERS)
        self.calls = 0
        self.delay = delay
        self.fail_with: BaseException | None = None
        self._lock = threading.Lock()

    def authenticate(self, environ, identity):
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        login, password = identity.get("login"), identity.get("password")
        if login in self.users and self.users[login] == password:
            identity["email"] = f"{login}@example.org"
            identity["dn"] = f"uid={login},ou=people,dc=example,dc=org"
            return f"user:{login}"
        return None


@implementer(IMetadataProvider)
class CountingMetadata:
    def __init__(self):
        self.calls = 0
        self.fail_with: BaseException | None = None
        self._lock = threading.Lock()

    def add_metadata(self, environ, identity):
        with self._lock:
            self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        userid = identity["repoze.who.userid"]
        identity["groups"] = ["staff", f"group-of-{userid}"]
        identity["display"] = userid.upper()
        identity["photo"] = b"\x89PNG\x00\xff"
        identity["pair"] = ("a", 1)


def make_authenticator(**options):
    """A factory, as an ini file names it (``module:factory`` + options as strings)."""
    users = {}
    for pair in options.pop("users", "alice:wonderland").split():
        login, _, password = pair.partition(":")
        users[login] = password
    if options:
        raise TypeError(f"unexpected options {sorted(options)}")
    return CountingAuthenticator(users)


def make_metadata(**options):
    return CountingMetadata()


__all__ = ["BackendUnavailable", "CountingAuthenticator", "CountingMetadata"]

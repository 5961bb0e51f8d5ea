"""The small "directory client" interface the shared code (:mod:`.directory`) is written on.

One implementation per ``ldap_library``: :mod:`.ldap3_client` (pure Python) and
:mod:`.python_ldap_client` (libldap, C). A client only moves requests and answers: it opens
a connection (TCP, and TLS for ``ldaps://``) within ``connect_timeout``, runs STARTTLS,
binds, searches and closes, each exchange bounded by ``timeout``. Everything that decides
an answer stays above it, shared, so both libraries answer alike: the pool and failover,
the circuit breaker, STARTTLS before anything else, the input refusals, filter escaping,
and what each result code means (:mod:`.results`).

A client reports a failure in one of two ways, whatever its library raises:

* :class:`ClientUnreachable`: the exchange failed (refused, dropped, timed out, TLS
  refused); the directory could not be asked;
* :class:`ClientRequestNotBuilt`: the library could not build the request from the values
  given (nothing was sent): the input's fault, a "no".

An LDAP result (any code, success or not) is an :class:`Answer`, never an exception.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from .options import _ServerSpec, _Settings
from .results import _Entry

#: The module implementing each ``ldap_library`` (imported when first chosen: python-ldap
#: is an optional extra).
_IMPLEMENTATIONS = {
    "ldap3": ".ldap3_client",
    "python-ldap": ".python_ldap_client",
}


class ClientUnreachable(Exception):
    """The exchange with the server failed; ``timed_out`` when it ran out of time."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class ClientRequestNotBuilt(Exception):
    """The library refused to build the request from the values given (nothing was sent).

    The message names the library's exception type only (it may hold the values)."""


@dataclass(frozen=True)
class Answer:
    """One LDAP result: its code (0 is success), description (``invalidCredentials``, the
    RFC 4511 name, whatever the library calls it) and the server's diagnostic message."""

    code: int
    description: str
    message: str = ""


@dataclass(frozen=True)
class SearchAnswer:
    """A search's result, its entries, and whether it returned continuation references."""

    answer: Answer
    entries: list[_Entry]
    references: bool = False


class Connection(Protocol):
    """One connection to one server, used by one thread at a time."""

    def start_tls(self) -> None:
        """Run STARTTLS (certificate checked as configured); raise ClientUnreachable."""

    def bind(self, dn: str | None, password: bytes | None) -> Answer:
        """A simple bind (``dn`` None: anonymous). ``password`` is already SASLprep-ed;
        the client keeps no copy of it after the call."""

    def search(self, base: str, search_filter: str, scope: str, attributes: list[str],
               size_limit: int) -> SearchAnswer:
        """A search (``scope``: base, one, sub; no aliases dereferenced, no referral
        followed, the server asked to stop after ``timeout``)."""

    def close(self) -> None:
        """Unbind and close; never raises (the connection is being thrown away)."""


class Library(Protocol):
    """Opens connections for one directory's settings (what can be, computed once)."""

    def connect(self, spec: _ServerSpec) -> Connection:
        """A connection to ``spec``'s server, TCP (and TLS for ldaps) up; raise
        ClientUnreachable."""


def make_library(settings: _Settings) -> Library:
    """The client of ``settings.library`` for these settings."""
    module = importlib.import_module(_IMPLEMENTATIONS[settings.library], __package__)
    library: Library = module.make_library(settings)
    return library

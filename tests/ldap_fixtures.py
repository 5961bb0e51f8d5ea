"""pytest fixtures: real slapd servers (Debian's package) on free loopback ports.

Loaded as a plugin (``pytest_plugins = ["ldap_fixtures"]`` in conftest.py). The data is the
packaged sample directory (``repoze_who_memcached/data/sample_users.ldif``).
"""

from __future__ import annotations

import pytest

from repoze_who_memcached.ldap import options as ldap_option_parsing
from repoze_who_memcached.testing import SlapdServer

#: Every ``ldap_library``: a test using the ``ldap_library`` fixture runs once with each.
LDAP_LIBRARIES = ldap_option_parsing.LIBRARIES
# The libraries that can verify a certificate for an IP address (the test servers listen on
# 127.0.0.1) on this Python: ldap3 cannot on 3.12+, and such a config is refused at load.
IP_TLS_LIBRARIES = tuple(
    name for name in LDAP_LIBRARIES
    if name != "ldap3" or ldap_option_parsing.LDAP3_VERIFIES_IP_HOSTS
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ldap_libraries(*names): run the test with these ldap_library values only "
        "(a test of one library's own behaviour)")


def pytest_generate_tests(metafunc):
    if "ldap_library" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("ldap_libraries")
        names = marker.args if marker else LDAP_LIBRARIES
        metafunc.parametrize("ldap_library", names, indirect=True)


@pytest.fixture
def ldap_library(request, monkeypatch):
    """The ``ldap_library`` every LDAP plugin of this test is made with, however it is made
    (a factory call, a who.ini, the CLI): the factories' default is switched, so the same
    test, unchanged, runs against each library."""
    if "slapd_tls" in request.fixturenames and request.param not in IP_TLS_LIBRARIES:
        pytest.skip(f"{request.param} cannot verify a certificate for 127.0.0.1 on this "
                    "Python (refused at load: see test_ldap3_refuses_ip_hosts_with_tls_...)")
    monkeypatch.setattr(ldap_option_parsing, "DEFAULT_LDAP_LIBRARY", request.param)
    return request.param


@pytest.fixture(scope="session")
def slapd():
    """One plain-text slapd for the whole session. Tests must not stop or pause it."""
    with SlapdServer() as server:
        yield server


@pytest.fixture(scope="session")
def slapd_tls():
    """A slapd with STARTTLS (self-signed; trust ``ca_file``) that refuses binds in clear."""
    with SlapdServer(tls=True) as server:
        yield server


@pytest.fixture
def private_slapd():
    """A slapd of this test's own, for tests that stop, pause or restart it."""
    with SlapdServer() as server:
        yield server


def ldap_options(server: SlapdServer, **extra: str) -> dict[str, str]:
    """ini-style options for our LDAP plugins against ``server`` as the reader account."""
    options = {
        "url": server.url,
        "base_dn": server.users_base_dn,
        "bind_dn": server.reader_dn,
        "bind_password": server.reader_password,
    }
    options.update(extra)
    return options


@pytest.fixture
def ldap_config(slapd):
    """Options for the session slapd; a test may copy and extend them."""
    return ldap_options(slapd)


def change_password(server: SlapdServer, dn: str, password: str) -> None:
    """Set ``dn``'s password in ``server`` as its root DN (a password change in the directory)."""
    import ldap3

    admin = ldap3.Connection(ldap3.Server(server.url, get_info=ldap3.NONE), server.root_dn,
                             server.root_password, auto_bind=True)
    assert admin.modify(dn, {"userPassword": [(ldap3.MODIFY_REPLACE, [password])]})
    admin.unbind()

"""ldap_library = ldap3 | python-ldap: the option, python-ldap's own settings and errors.

The behaviour both share is tested by test_ldap.py and test_ldap_hardening.py, each test run
once per library (the ``ldap_library`` fixture of ldap_fixtures.py). Here: that the fixture
really switches the library, the option's parsing, python-ldap's timeouts, its exceptions
mapped to our answers, and ``ldaps://`` (which libldap connects itself), against real slapd.
"""

from __future__ import annotations

import ldap
import pytest
from ldap_fixtures import IP_TLS_LIBRARIES, ldap_options

from repoze_who_memcached.errors import BackendUnavailable, ConfigError
from repoze_who_memcached.ldap import _Refused, make_authenticator, make_metadata_provider
from repoze_who_memcached.ldap.options import LDAP3_VERIFIES_IP_HOSTS
from repoze_who_memcached.testing import SlapdServer, free_port

pytestmark = pytest.mark.slow

ALICE_DN = "uid=alice,ou=people,dc=example,dc=org"


def identity(login: str, password: str) -> dict[str, str]:
    return {"login": login, "password": password}


@pytest.fixture
def plugins():
    made = []
    yield made
    for plugin in made:
        plugin.close()


def test_the_fixture_switches_every_factory(ldap_library, ldap_config, plugins):
    """However made, a plugin of this test uses the fixture's library (else the parametrized
    suites would run ldap3 twice)."""
    plugin = make_authenticator(**ldap_config)
    plugins.append(plugin)
    expected = {"ldap3": "Ldap3Library", "python-ldap": "PythonLdapLibrary"}[ldap_library]
    assert type(plugin.directory.library).__name__ == expected
    assert plugin.settings.library == ldap_library
    assert plugin.authenticate({}, identity("alice", "wonderland")) == ALICE_DN


@pytest.mark.parametrize("factory", [make_authenticator, make_metadata_provider])
def test_ldap_library_option(ldap_config, factory, plugins):
    extra = {"attributes": "mail"} if factory is make_metadata_provider else {}
    for value, name in [("ldap3", "ldap3"), ("python-ldap", "python-ldap"),
                        ("Python-LDAP", "python-ldap")]:
        plugin = factory(**ldap_config, **extra, ldap_library=value)
        plugins.append(plugin)
        assert plugin.settings.library == name
    with pytest.raises(ConfigError, match="ldap_library") as info:
        factory(**ldap_config, **extra, ldap_library="openldap")
    assert "ldap3, python-ldap" in str(info.value)


def test_ldap_library_is_not_in_the_cache_fingerprint(ldap_config, plugins):
    """Both libraries answer alike, so caches made with either may share entries."""
    made = [make_authenticator(**ldap_config, ldap_library=name)
            for name in ("ldap3", "python-ldap")]
    plugins.extend(made)
    assert made[0].cache_fingerprint() == made[1].cache_fingerprint()
    assert "python-ldap" not in made[1].cache_fingerprint()


def test_python_ldap_connections_carry_our_timeouts(ldap_config, plugins):
    plugin = make_authenticator(**ldap_config, ldap_library="python-ldap", connect_timeout="2",
                                timeout="3")
    plugins.append(plugin)
    assert plugin.authenticate({}, identity("alice", "wonderland")) == ALICE_DN
    [pooled] = plugin.directory._idle
    conn = pooled._conn
    assert conn.get_option(ldap.OPT_NETWORK_TIMEOUT) == 2.0
    assert conn.get_option(ldap.OPT_TIMEOUT) == 3.0
    assert conn.get_option(ldap.OPT_TIMELIMIT) == 3
    assert conn.get_option(ldap.OPT_REFERRALS) == 0
    assert conn.timeout == 3


def test_python_ldap_hung_server_times_out_as_backend_unavailable(plugins):
    """OPT_TIMEOUT bounds a python-ldap call on a hung slapd: ldap.TIMEOUT becomes
    BackendUnavailable ("timed out"), and opens the breaker (a slow failure)."""
    with SlapdServer() as server:
        plugin = make_authenticator(**ldap_options(server), ldap_library="python-ldap",
                                    timeout="1", retry_after="30")
        plugins.append(plugin)
        assert plugin.authenticate({}, identity("alice", "wonderland")) == ALICE_DN
        server.pause()
        try:
            with pytest.raises(BackendUnavailable, match="timed out"):
                plugin.authenticate({}, identity("alice", "wonderland"))
            assert plugin.directory.breaker.is_open
        finally:
            server.resume()


def test_python_ldap_errors_mapped_to_our_answers(ldap_config, plugins):
    """INVALID_CREDENTIALS is a "no"; SERVER_DOWN (a refused port) is BackendUnavailable;
    SIZELIMIT_EXCEEDED (two entries for one login) is a "no", never a match."""
    plugin = make_authenticator(**ldap_config, ldap_library="python-ldap")
    wide = make_authenticator(**ldap_config, ldap_library="python-ldap",
                              filter="(|(uid={login})(objectClass=inetOrgPerson))")
    down = make_authenticator(**{**ldap_config, "url": f"ldap://127.0.0.1:{free_port()}"},
                              ldap_library="python-ldap")
    plugins.extend([plugin, wide, down])
    assert plugin.authenticate({}, identity("alice", "not-her-password")) is None
    assert wide.authenticate({}, identity("alice", "wonderland")) is None
    assert wide.counters()["refused_inputs"] == 1  # the partial (size-limited) result
    with pytest.raises(BackendUnavailable, match="Connection refused"):
        down.authenticate({}, identity("alice", "wonderland"))
    assert plugin.counters()["backend_errors"] == 0 and wide.counters()["backend_errors"] == 0


def test_a_nul_in_a_dn_is_refused_before_sending(ldap_config, plugins):
    """python-ldap raises ValueError for a str holding NUL: the request is never built,
    which is a "no" for the user's sake, not a broken directory."""
    plugin = make_authenticator(**ldap_config, ldap_library="python-ldap")
    plugins.append(plugin)
    with pytest.raises(_Refused) as info:
        plugin.directory.check_password("uid=al\x00ice,ou=people,dc=example,dc=org", b"x")
    assert info.value.answered is False and "ValueError" in info.value.reason
    assert not plugin.directory.breaker.is_open


class LdapsSlapd(SlapdServer):
    """The TLS test slapd, also listening for ``ldaps://`` on a port of its own."""

    def __init__(self) -> None:
        super().__init__(tls=True)
        self.ldaps_port = free_port()

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.host}:{self.ldaps_port}"

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("-h") + 1] += f" {self.ldaps_url}/"
        return command


@pytest.fixture(scope="module")
def ldaps_slapd():
    with LdapsSlapd() as server:
        yield server


@pytest.mark.parametrize("library", IP_TLS_LIBRARIES)
def test_ldaps_logins_and_certificate_checks(ldaps_slapd, library, plugins):
    options = {**ldap_options(ldaps_slapd), "url": ldaps_slapd.ldaps_url,
               "ldap_library": library}
    trusted = make_authenticator(**options, tls_ca_file=str(ldaps_slapd.ca_file))
    untrusted = make_authenticator(**options)
    plugins.extend([trusted, untrusted])
    assert trusted.authenticate({}, identity("alice", "wonderland")) == ALICE_DN
    assert trusted.authenticate({}, identity("alice", "nope")) is None
    with pytest.raises(BackendUnavailable):
        untrusted.authenticate({}, identity("alice", "wonderland"))


@pytest.mark.parametrize("library", IP_TLS_LIBRARIES)
def test_ldaps_user_bind_fails_over_from_a_refused_server(ldaps_slapd, library, plugins):
    """libldap connects ldaps:// itself, lazily; we force the connection at once, inside
    the failover, so a dead first server is skipped by a user bind too (called first here:
    no service connection has marked the dead server yet)."""
    dead = f"ldaps://127.0.0.1:{free_port()}"
    plugin = make_authenticator(**ldap_options(ldaps_slapd, url=f"{dead} {ldaps_slapd.ldaps_url}",
                                               tls_ca_file=str(ldaps_slapd.ca_file)),
                                ldap_library=library)
    plugins.append(plugin)
    assert plugin.directory.check_password(ALICE_DN, b"wonderland") is True
    assert plugin.directory.check_password(ALICE_DN, b"nope") is False
    assert plugin.authenticate({}, identity("alice", "wonderland")) == ALICE_DN


def test_ldap3_refuses_ip_hosts_with_tls_where_it_cannot_verify(slapd_tls):
    """On Python 3.12+ ldap3's own certificate-name check refuses every IP address: such a
    config fails at load naming the option and the ways out, instead of every login failing."""
    options = {**ldap_options(slapd_tls), "start_tls": "true",
               "tls_ca_file": str(slapd_tls.ca_file), "ldap_library": "ldap3"}
    if LDAP3_VERIFIES_IP_HOSTS:
        plugin = make_authenticator(**options)
        assert plugin.authenticate({}, {"login": "alice", "password": "wonderland"})
        plugin.close()
    else:
        with pytest.raises(ConfigError, match="option 'url'.*IP address.*python-ldap"):
            make_authenticator(**options)
    make_authenticator(**{**options, "tls_verify": "false"}).close()  # nothing to match

"""LDAP hardening (issue 11 points 1, 2, 8, 9; issue 17 points 4, 5) against a real slapd.

Whatever a client sends is a "no" or a "yes", never a failing directory; only the
directory's own slow failures open the circuit breaker; partial results are refused; no
secret shows in a repr, an error or a log; ``health_check`` and ``cache_fingerprint``.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import suppress

import ldap3
import pytest
from conftest import SECRET
from ldap_fixtures import change_password, ldap_options

from repoze_who_memcached import make_plugin
from repoze_who_memcached.cli import main as cli_main
from repoze_who_memcached.errors import BackendUnavailable, ConfigError
from repoze_who_memcached.ldap import (
    DEFAULT_MAX_LOGIN_BYTES,
    DEFAULT_MAX_PASSWORD_BYTES,
    _Refused,
    make_authenticator,
    make_metadata_provider,
)
from repoze_who_memcached.testing import SAMPLE_USERS, SlapdServer, free_port

# Every test here runs once per ldap_library (ldap3, python-ldap): see ldap_fixtures.py.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ldap_library")]

ALICE_DN = "uid=alice,ou=people,dc=example,dc=org"
BOB_DN = "uid=bob,ou=people,dc=example,dc=org"
LDAP = "repoze_who_memcached.ldap:make_authenticator"

# Passwords ldap3's SASLprep (RFC 4013) refuses before sending anything.
SASLPREP_REFUSED = {
    "control": "wonder\x01land",
    "delete": "wonder\x7fland",
    "private-use": "wonder\ue000land",
    "non-character": "wonder\ufdd0land",
    "mixed-direction": "\u05d0wonderland",
    "maps-to-nothing": "\u00ad",
    "tagging": "wonder\U000e0001land",
}


def identity(login, password, **extra):
    return {"login": login, "password": password, **extra}


@pytest.fixture(autouse=True)
def _close_plugins(monkeypatch):
    made = []

    def tracking(factory):
        def make(**options):
            plugin = factory(**options)
            made.append(plugin)
            return plugin

        return make

    monkeypatch.setitem(globals(), "make_authenticator", tracking(make_authenticator))
    monkeypatch.setitem(globals(), "make_metadata_provider", tracking(make_metadata_provider))
    yield
    for plugin in made:
        plugin.close()


def wire(plugin) -> dict[str, int]:
    """What went to the directory so far."""
    counts = plugin.counters()
    return {name: counts[name] for name in ("searches", "service_binds", "user_binds")}


def our_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("repoze_who_memcached")]


# -- 1. client input is a denial, never a backend failure ----------------------------------


@pytest.mark.parametrize("password", SASLPREP_REFUSED.values(), ids=SASLPREP_REFUSED.keys())
def test_saslprep_refused_password_is_a_no_without_a_request(slapd, ldap_config, password,
                                                             caplog):
    plugin = make_authenticator(**ldap_config, retry_after="60")
    before = slapd.bind_count()
    with caplog.at_level(logging.DEBUG, "repoze_who_memcached"):
        for _ in range(20):
            assert plugin.authenticate({}, identity("alice", password)) is None
    assert wire(plugin) == {"searches": 0, "service_binds": 0, "user_binds": 0}
    counts = plugin.counters()
    assert counts["refused_inputs"] == 20 and counts["backend_errors"] == 0
    assert counts["failures"] == 20
    assert slapd.bind_count() == before
    records = our_records(caplog)
    assert len(records) == 1 and "SASLprep" in records[0].getMessage()  # rate-limited
    assert password not in caplog.text and "wonderland" not in caplog.text
    assert not plugin.directory.breaker.is_open
    assert plugin.authenticate({}, identity("alice", "wonderland")) == ALICE_DN


def test_ldap3_itself_refuses_these_passwords(slapd):
    """The premise: handed to ldap3 as text, each raises an LDAPException before sending."""
    for password in SASLPREP_REFUSED.values():
        conn = ldap3.Connection(ldap3.Server(slapd.url, get_info=ldap3.NONE), ALICE_DN,
                                password, raise_exceptions=False)
        conn.open()
        with pytest.raises(ldap3.core.exceptions.LDAPSASLPrepError):
            conn.bind()
        conn.unbind()


def test_password_that_saslprep_maps_is_sent_as_ldap3_would(private_slapd):
    """SASLprep maps some characters (a non-ASCII space to a space, a soft hyphen to
    nothing): we bind with the same bytes ldap3 would send, so such passwords still work."""
    admin = ldap3.Connection(ldap3.Server(private_slapd.url, get_info=ldap3.NONE),
                             private_slapd.root_dn, private_slapd.root_password, auto_bind=True)
    assert admin.modify(BOB_DN, {"userPassword": [(ldap3.MODIFY_REPLACE, ["my secret"])]})
    admin.unbind()
    plugin = make_authenticator(**ldap_options(private_slapd))
    assert plugin.authenticate({}, identity("bob", "my secret")) == BOB_DN
    assert plugin.authenticate({}, identity("bob", "my\u00a0se\u00adcret")) == BOB_DN
    assert plugin.authenticate({}, identity("bob", "mysecret")) is None


@pytest.mark.parametrize(
    ("login", "password", "asked"),
    [
        ("alice", "x" * DEFAULT_MAX_PASSWORD_BYTES, True),
        ("alice", "x" * (DEFAULT_MAX_PASSWORD_BYTES + 1), False),
        ("alice", "é" * (DEFAULT_MAX_PASSWORD_BYTES // 2 + 1), False),  # bytes, not chars
        ("alice", "x" * 1_000_000, False),
        ("a" * DEFAULT_MAX_LOGIN_BYTES, "wonderland", True),
        ("a" * (DEFAULT_MAX_LOGIN_BYTES + 1), "wonderland", False),
        ("ë" * (DEFAULT_MAX_LOGIN_BYTES // 2 + 1), "wonderland", False),
    ],
    ids=["password-at-cap", "password-over", "password-over-in-bytes", "password-huge",
         "login-at-cap", "login-over", "login-over-in-bytes"],
)
def test_size_caps_are_checked_before_any_work(ldap_config, login, password, asked):
    plugin = make_authenticator(**ldap_config)
    assert plugin.authenticate({}, identity(login, password)) is None
    assert (wire(plugin)["searches"] == 1) is asked
    assert plugin.counters()["refused_inputs"] == (0 if asked else 1)
    assert plugin.counters()["backend_errors"] == 0


def test_size_caps_are_options(ldap_config, slapd):
    plugin = make_authenticator(**ldap_config, max_password_bytes="10", max_login_bytes="3")
    assert plugin.authenticate({}, identity("bob", "builder")) == BOB_DN
    assert plugin.authenticate({}, identity("alice", "wonderland")) is None  # login: 5 > 3
    assert plugin.authenticate({}, identity("bob", "builder-too-long")) is None
    assert plugin.counters()["refused_inputs"] == 2 and wire(plugin)["searches"] == 1
    provider = make_metadata_provider(**ldap_config, attributes="mail", userid_attribute="uid",
                                      max_login_bytes="3")
    bob, alice = {"repoze.who.userid": "bob"}, {"repoze.who.userid": "alice"}
    provider.add_metadata({}, bob)
    provider.add_metadata({}, alice)
    assert bob["mail"] == "bob@example.org" and "mail" not in alice
    assert wire(provider)["searches"] == 1


def test_dn_userids_may_be_longer_than_logins(ldap_config):
    provider = make_metadata_provider(**ldap_config, attributes="mail")
    long_dn = "cn=" + "x" * 300 + ",ou=people,dc=example,dc=org"  # over max_login_bytes
    provider.add_metadata({}, {"repoze.who.userid": long_dn})
    assert wire(provider)["searches"] == 1  # asked (no such entry: nothing added)
    huge_dn = "cn=" + "x" * 5000 + ",ou=people,dc=example,dc=org"
    ident = {"repoze.who.userid": huge_dn}
    provider.add_metadata({}, ident)
    assert wire(provider)["searches"] == 1 and ident == {"repoze.who.userid": huge_dn}


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_password_bytes", "0"), ("max_password_bytes", "lots"),
     ("max_login_bytes", "-1"), ("max_login_bytes", "1e3")],
)
def test_bad_size_caps_name_the_option(ldap_config, option, value):
    with pytest.raises(ConfigError, match=repr(option)):
        make_authenticator(**ldap_config, **{option: value})


def test_max_password_bytes_is_not_a_metadata_option(ldap_config):
    with pytest.raises(ConfigError, match="unknown option 'max_password_bytes'"):
        make_metadata_provider(**ldap_config, attributes="mail", max_password_bytes="10")




def test_burst_of_bad_input_never_opens_the_breaker_nor_serves_stale(
        private_slapd, memcached, caplog):
    """Through the cache (stale_ttl set) in front of the LDAP authenticator: a client
    sending passwords ldap3 refuses, oversized ones and logins of spaces, in a thread,
    while other users log in for the first time. Before the fix, the first bad password
    opened the breaker (a BackendUnavailable), refusing every uncached login for
    retry_after and serving alice's old, changed password from the stale entry."""
    options = {f"authenticator.{k}": v for k, v in ldap_options(private_slapd).items()}
    cache = make_plugin(secret=SECRET, memcached_urls=memcached.url, authenticator=LDAP,
                        ttl="1", stale_ttl="600", **options, **{"authenticator.retry_after": "60"})
    ldap = cache.authenticator
    try:
        assert cache.authenticate({}, identity("alice", "wonderland")) == ALICE_DN
        change_password(private_slapd, ALICE_DN, "looking-glass")
        time.sleep(1.2)  # alice's old entry is now stale (ttl = 1), not gone (stale_ttl)
        bad_inputs = [identity("mallory", p) for p in SASLPREP_REFUSED.values()] + [
            identity("mallory", "x" * 5000), identity(" " * 3, "pw"),
            identity("m" * 300, "pw"), identity("alice", "wonderland\x00"),
        ]
        others = {login: pw for login, pw in SAMPLE_USERS.items() if login not in ("alice",
                                                                                   "twin")}
        let_in = []
        stop = threading.Event()

        def attacker() -> None:
            for n in range(400):
                if stop.is_set():
                    break
                if cache.authenticate({}, dict(bad_inputs[n % len(bad_inputs)])) is not None:
                    let_in.append(n)

        with caplog.at_level(logging.INFO, "repoze_who_memcached"):
            thread = threading.Thread(target=attacker, daemon=True)
            thread.start()
            try:
                for _ in range(3):
                    for login, password in others.items():
                        cache.invalidate_user(login=login)  # so that each login needs LDAP
                        assert cache.authenticate({}, identity(login, password)) is not None, (
                            login, ldap.counters())
                    # the old password's entry is stale: never served while LDAP answers
                    assert cache.authenticate({}, identity("alice", "wonderland")) is None
                    assert cache.authenticate({}, identity("alice", "looking-glass")) == ALICE_DN
            finally:
                stop.set()
                thread.join(30)
        assert not thread.is_alive()
        assert let_in == []
        counts = ldap.counters()
        assert counts["backend_errors"] == 0 and counts["fast_failures"] == 0, counts
        assert counts["refused_inputs"] > 0
        assert not ldap.directory.breaker.is_open
        assert cache.counters.snapshot()["backend_errors"] == 0
        assert "wonderland" not in caplog.text and "looking-glass" not in caplog.text
        # rate-limited: a handful of lines for hundreds of bad requests
        assert len(our_records(caplog)) <= 10, [r.getMessage() for r in our_records(caplog)]
    finally:
        cache.backend.close()


# -- 2. the breaker opens only on failures that cost time ----------------------------------


def test_refused_connections_never_open_the_breaker(private_slapd):
    """slapd stopped: each login is refused at once (BackendUnavailable, quickly), the
    breaker stays closed, and the first login once slapd is back on its port succeeds."""
    plugin = make_authenticator(**ldap_options(private_slapd, retry_after="3600"))
    mdprovider = make_metadata_provider(**ldap_options(private_slapd, retry_after="3600"),
                                        attributes="mail", userid_attribute="uid")
    assert plugin.authenticate({}, identity("bob", "builder")) == BOB_DN
    private_slapd.stop()
    for _ in range(5):
        with pytest.raises(BackendUnavailable, match="Connection refused"):
            plugin.authenticate({}, identity("alice", "wonderland"))
        with pytest.raises(BackendUnavailable, match="Connection refused"):
            mdprovider.add_metadata({}, {"repoze.who.userid": "bob"})
    for each in (plugin, mdprovider):
        assert not each.directory.breaker.is_open
        assert each.counters()["fast_failures"] == 0
    private_slapd.start()
    assert plugin.authenticate({}, identity("alice", "wonderland")) == ALICE_DN
    bob = {"repoze.who.userid": "bob"}
    mdprovider.add_metadata({}, bob)
    assert bob["mail"] == "bob@example.org"


def test_a_hung_directory_still_opens_the_breaker(private_slapd):
    plugin = make_authenticator(**ldap_options(private_slapd, timeout="1", connect_timeout="1",
                                               retry_after="3600"))
    assert plugin.authenticate({}, identity("bob", "builder")) == BOB_DN
    private_slapd.pause()
    try:
        with pytest.raises(BackendUnavailable, match="timed out"):
            plugin.authenticate({}, identity("bob", "builder"))
        assert plugin.directory.breaker.is_open
        with pytest.raises(BackendUnavailable, match="retry_after"):
            plugin.authenticate({}, identity("alice", "wonderland"))
    finally:
        private_slapd.resume()


# -- 3. partial results and filters ldap3 cannot encode ------------------------------------


class SizeLimitedSlapd(SlapdServer):
    """A slapd that returns at most one entry per search (``sizelimit 1``)."""

    def _config_text(self) -> str:
        return super()._config_text().replace("\ndatabase mdb\n", "\nsizelimit 1\n"
                                              "database mdb\n", 1)


@pytest.fixture(scope="module")
def size_limited_slapd():
    with SizeLimitedSlapd() as server:
        yield server


def test_size_limited_search_is_ambiguous_not_a_match(size_limited_slapd, caplog):
    plugin = make_authenticator(**ldap_options(size_limited_slapd))
    with caplog.at_level(logging.WARNING, "repoze_who_memcached"):
        # two entries match "twin": the server sends one, then sizeLimitExceeded
        assert plugin.authenticate({}, identity("twin", "twin-password")) is None
    assert plugin.counters()["user_binds"] == 0  # never bound as the one it happened to send
    assert "sizeLimitExceeded" in caplog.text
    assert plugin.counters()["backend_errors"] == 0
    assert not plugin.directory.breaker.is_open
    assert plugin.authenticate({}, identity("alice", "wonderland")) == ALICE_DN  # one match


def test_size_limited_group_list_adds_no_metadata(size_limited_slapd):
    provider = make_metadata_provider(**ldap_options(size_limited_slapd), attributes="mail",
                                      group_base_dn=size_limited_slapd.groups_base_dn,
                                      userid_attribute="uid")
    alice = {"repoze.who.userid": "alice"}  # in two groups: the list would be cut
    provider.add_metadata({}, alice)
    assert alice == {"repoze.who.userid": "alice"}
    bob = {"repoze.who.userid": "bob"}  # in one group
    provider.add_metadata({}, bob)
    assert bob["groups"] == ["staff"] and bob["mail"] == "bob@example.org"
    assert provider.counters()["backend_errors"] == 0


@pytest.mark.parametrize("template", ["(uid={login}*)", "(uid=*{login})", "(uid=*{login}*)",
                                      "(|(uid={login})(mail={login}*))"])
@pytest.mark.parametrize("login", [" ", "   ", "\t", " \u00a0 ", "\u3000"])
def test_whitespace_logins_are_answered_not_crashes(slapd, ldap_config, template, login):
    """ldap3 strips filter values: unescaped, a login of spaces made ``(uid={login}*)``
    unencodable (a pyasn1 error: a 500 uncached, ~140 log lines per request cached). Now
    the spaces are escaped and reach slapd, which matches them by its own rules (RFC 4518:
    spaces are insignificant, so ``(uid=*\\20)`` finds every uid: several entries, a "no")."""
    plugin = make_authenticator(**ldap_config, filter=template)
    assert plugin.authenticate({}, identity(login, "wonderland")) is None
    counts = plugin.counters()
    assert counts["backend_errors"] == 0 and counts["searches"] == 1
    assert counts["user_binds"] == 0


def test_filter_values_keep_their_whitespace():
    """What we send: every whitespace character escaped, so ldap3 has nothing to strip."""
    plugin = make_authenticator(url="ldap://127.0.0.1:1", base_dn="dc=example,dc=org",
                                filter="(uid={login}*)")
    render = plugin.settings.filter.render
    assert render({"login": "   "}) == "(uid=\\20\\20\\20*)"
    assert render({"login": "a\tb\u00a0"}) == "(uid=a\\09b\\c2\\a0*)"
    assert render({"login": "al ice*("}) == "(uid=al\\20ice\\2a\\28*)"
    assert render({"login": "zoë"}) == "(uid=zoë*)"


def test_spaces_login_through_the_cache_is_a_denial_and_logs_little(slapd, memcached, caplog):
    options = {f"authenticator.{k}": v for k, v in ldap_options(slapd).items()}
    cache = make_plugin(secret=SECRET, memcached_urls=memcached.url, authenticator=LDAP,
                        **options, **{"authenticator.filter": "(uid={login}*)"})
    try:
        with caplog.at_level(logging.DEBUG, "repoze_who_memcached"):
            for _ in range(20):
                assert cache.authenticate({}, identity("   ", "wonderland")) is None
        assert len([r for r in our_records(caplog) if r.levelno >= logging.WARNING]) == 0
        assert cache.counters.snapshot()["backend_errors"] == 0
        assert cache.authenticate({}, identity("bob", "builder")) == BOB_DN
    finally:
        cache.backend.close()


@pytest.mark.ldap_libraries("ldap3")  # pyasn1 refuses it; libldap sends it
def test_a_request_ldap3_cannot_encode_is_refused_and_keeps_the_connection(slapd, ldap_config):
    """Defence in depth below the escaping: a filter pyasn1 cannot encode (an empty
    substring piece, what a login of spaces used to make) is refused before anything is
    sent; the pooled connection stays good and the breaker is untouched."""
    plugin = make_authenticator(**ldap_config)
    assert plugin.authenticate({}, identity("bob", "builder")) == BOB_DN
    with pytest.raises(_Refused) as info:
        plugin.directory.search(slapd.users_base_dn, "(uid=   *)", "sub", [], 2)
    assert info.value.answered is False and "PyAsn1Error" in info.value.reason
    assert plugin.authenticate({}, identity("alice", "wonderland")) == ALICE_DN
    assert plugin.counters()["service_binds"] == 1  # the same connection served both
    assert plugin.counters()["backend_errors"] == 0


# -- 4. no secret in a repr, an error message or a log -------------------------------------


def reachable(root, depth: int = 5):
    """Every object reachable from ``root`` through attributes, containers and dataclass
    fields (ours and ldap3's), each once."""
    seen: set[int] = set()
    todo = [(root, 0)]
    while todo:
        obj, level = todo.pop()
        if id(obj) in seen or level > depth:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            children = list(obj.keys()) + list(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = list(obj)
        elif isinstance(obj, (str, bytes, int, float, type(None))):
            children = []
        else:
            children = list(getattr(obj, "__dict__", {}).values())
            children += [getattr(obj, name, None) for name in
                         getattr(type(obj), "__dataclass_fields__", {})]
        todo.extend((child, level + 1) for child in children
                    if not isinstance(child, (type, logging.Logger, threading.Lock().__class__)))


def test_no_secret_in_any_repr_or_str(slapd, ldap_config, tmp_path):
    password_file = tmp_path / "reader.pw"
    password_file.write_text(slapd.reader_password)
    options = {k: v for k, v in ldap_config.items() if k != "bind_password"}
    plugins = [
        make_authenticator(**options, bind_password_file=str(password_file)),
        make_metadata_provider(**ldap_config, attributes="mail", userid_attribute="uid",
                               group_base_dn=slapd.groups_base_dn),
    ]
    auth = plugins[0]
    assert auth.authenticate({}, identity("alice", "wonderland")) == ALICE_DN
    plugins[1].add_metadata({}, {"repoze.who.userid": "alice"})
    assert auth.directory._idle and plugins[1].directory._idle  # pooled connections held
    secrets = (slapd.reader_password, "wonderland")
    checked = 0
    for plugin in plugins:
        for obj in reachable(plugin):
            if isinstance(obj, (str, bytes)):
                continue  # the value itself (settings.bind_password) is held, of course
            texts = []
            for show in (repr, str):
                with suppress(Exception):  # some ldap3 internals cannot show themselves
                    texts.append(show(obj))
            for text in texts:
                assert not any(secret in text for secret in secrets), (type(obj), text[:200])
            checked += 1
    assert checked > 20
    assert "bind_password" not in repr(auth.settings)


def test_no_secret_in_errors_or_logs(slapd, caplog):
    secret = "pa%ss(word)*with%%odd%(here)s"
    with caplog.at_level(logging.DEBUG):
        wrong = make_authenticator(**ldap_options(slapd, bind_password=secret))
        with pytest.raises(BackendUnavailable) as info:
            wrong.authenticate({}, identity("alice", "wonderland"))
        assert "invalidCredentials" in str(info.value)
        problems = wrong.health_check()
        down = make_authenticator(**ldap_options(slapd, bind_password=secret,
                                                 url=f"ldap://127.0.0.1:{free_port()}"))
        with pytest.raises(BackendUnavailable) as refused:
            down.authenticate({}, identity("alice", "wonderland"))
        for bad in ({"base_dn": "not a dn"}, {"basedn": "x"}, {"bind_dn": None},
                    {"filter": "(uid={user})"}):
            options = {**ldap_options(slapd, bind_password=secret), **bad}
            with pytest.raises(ConfigError) as config_error:
                make_authenticator(**{k: v for k, v in options.items() if v is not None})
            assert secret not in str(config_error.value) and "pa%ss" not in str(
                config_error.value)
    texts = [str(info.value), str(refused.value), *problems, caplog.text]
    assert problems
    for text in texts:
        assert secret not in text and "pa%ss" not in text and "wonderland" not in text


# -- 5. health_check and `repoze-who-memcached check` --------------------------------------


def test_health_check_of_a_healthy_and_of_a_broken_directory(slapd, ldap_config):
    md = make_metadata_provider(**ldap_config, attributes="mail",
                                group_base_dn=slapd.groups_base_dn)
    assert make_authenticator(**ldap_config).health_check() == []
    assert md.health_check() == []
    assert md.counters()["backend_errors"] == 0
    dead = f"ldap://127.0.0.1:{free_port()}"
    failover = make_authenticator(**{**ldap_config, "url": f"{dead} {slapd.url}"})
    problems = failover.health_check()
    assert len(problems) == 1 and problems[0].startswith(f"{dead}: cannot connect")
    no_base = make_metadata_provider(**ldap_config, attributes="mail",
                                     group_base_dn="ou=nowhere,dc=example,dc=org")
    problems = no_base.health_check()
    assert len(problems) == 1 and "group_base_dn 'ou=nowhere,dc=example,dc=org'" in problems[0]
    assert "no such entry" in problems[0]
    wrong = make_authenticator(**ldap_options(slapd, bind_password="not-it"))
    problems = wrong.health_check()
    assert len(problems) == 1 and "invalidCredentials" in problems[0]
    assert "not-it" not in problems[0]


def test_health_check_is_bounded_by_the_timeouts(private_slapd):
    plugin = make_authenticator(**ldap_options(private_slapd, timeout="1", connect_timeout="1"))
    private_slapd.pause()
    try:
        problems = plugin.health_check()  # returns (bounded), does not hang
    finally:
        private_slapd.resume()
    assert len(problems) == 1 and "timed out" in problems[0]
    assert not plugin.directory.breaker.is_open  # a check is no login
    assert plugin.health_check() == []


def write_who_ini(tmp_path, memcached, slapd) -> str:
    """A who.ini whose cache wraps our LDAP authenticator and metadata provider."""
    ldap = [f"{key} = {value}" for key, value in ldap_options(slapd).items()]
    lines = [
        "[plugin:basicauth]", "use = repoze.who.plugins.basicauth:make_plugin", "realm = r", "",
        "[plugin:ldap]", "use = repoze_who_memcached.ldap:make_authenticator", *ldap, "",
        "[plugin:ldapmd]", "use = repoze_who_memcached.ldap:make_metadata_provider",
        "attributes = mail", f"group_base_dn = {slapd.groups_base_dn}", *ldap, "",
        "[plugin:cached]", "use = repoze_who_memcached:make_plugin",
        "authenticator_name = ldap", "mdprovider_name = ldapmd",
        f"memcached_urls = {memcached.url}", f"secret = {SECRET}", "",
        "[identifiers]", "plugins = basicauth", "[authenticators]", "plugins = cached",
        "[mdproviders]", "plugins = cached", "[challengers]", "plugins = basicauth",
    ]
    who = tmp_path / "who.ini"
    who.write_text("\n".join(lines) + "\n")
    return str(who)


def test_cli_check_reports_the_directory(tmp_path, memcached, private_slapd, capsys):
    who = write_who_ini(tmp_path, memcached, private_slapd)
    assert cli_main(["check", who]) == 0
    out = capsys.readouterr().out
    assert "ok    authenticator <LdapAuthenticator" in out
    assert "ok    mdprovider <LdapMetadataProvider" in out
    private_slapd.stop()
    assert cli_main(["check", who]) == 1
    out = capsys.readouterr().out
    down = [line for line in out.splitlines() if "DOWN" in line]
    assert len(down) == 2 and all("Connection refused" in line for line in down), out
    assert private_slapd.reader_password not in out
    assert "ok    " in out  # memcached itself is fine
    private_slapd.start()
    assert cli_main(["check", who]) == 0
    capsys.readouterr()


def test_cli_check_asks_a_shared_plugin_once(tmp_path, memcached, private_slapd, capsys):
    """One object wrapped in both roles is checked (and reported) once."""
    options = {f"authenticator.{k}": v for k, v in ldap_options(private_slapd).items()}
    cache = make_plugin(secret=SECRET, memcached_urls=memcached.url, authenticator=LDAP,
                        **options)
    cache.mdprovider = cache.authenticator  # the same object in both roles
    from repoze_who_memcached.cli import check_wrapped

    private_slapd.stop()
    assert check_wrapped(cache) is False
    out = capsys.readouterr().out
    assert out.count("DOWN") == 1 and "authenticator" in out
    private_slapd.start()
    assert check_wrapped(cache) is True
    cache.backend.close()


def test_cli_check_fails_when_memcached_fails_too(tmp_path, private_memcached, slapd, capsys):
    who = write_who_ini(tmp_path, private_memcached, slapd)
    private_memcached.stop()
    assert cli_main(["check", who]) == 1
    out = capsys.readouterr().out
    assert "DOWN" in out and "ok    authenticator" in out


# -- 6. cache_fingerprint -------------------------------------------------------------------


def test_cache_fingerprint_is_stable_and_tells_directories_apart(slapd, ldap_config, tmp_path):
    first = make_authenticator(**ldap_config).cache_fingerprint()
    assert make_authenticator(**ldap_config).cache_fingerprint() == first
    # not the bind password, however given, and not the settings of how to connect
    password_file = tmp_path / "pw"
    password_file.write_text(slapd.reader_password)
    by_file = {k: v for k, v in ldap_config.items() if k != "bind_password"}
    assert make_authenticator(**by_file, bind_password_file=str(password_file),
                              timeout="9", pool_size="1").cache_fingerprint() == first
    assert slapd.reader_password not in first and "bind_password" not in first
    different = {
        "url": f"ldap://127.0.0.1:{free_port()}",
        "base_dn": "dc=example,dc=org",
        "filter": "(mail={login})",
        "scope": "one",
        "userid_attribute": "uid",
        "bind_dn": "cn=admin,dc=example,dc=org",
        "password_item": "pw",
        "login_item": "user",
        "max_password_bytes": "64",
    }
    texts = {first}
    for option, value in different.items():
        text = make_authenticator(**{**ldap_config, option: value}).cache_fingerprint()
        assert text not in texts, option
        texts.add(text)
    md = dict(ldap_config, attributes="mail", userid_attribute="uid")
    md_text = make_metadata_provider(**md).cache_fingerprint()
    assert md_text == make_metadata_provider(**md).cache_fingerprint()
    assert md_text not in texts  # an authenticator and a metadata provider differ
    for option, value in {"attributes": "mail cn", "missing": "none",
                          "group_base_dn": slapd.groups_base_dn,
                          "userid_filter": "(cn={userid})"}.items():
        assert make_metadata_provider(**{**md, option: value}).cache_fingerprint() != md_text


# -- 7. a misspelt option is named, not only the required one it hides ---------------------


@pytest.mark.parametrize(
    ("given", "missing", "unknown"),
    [
        ({"basedn": "ou=people,dc=example,dc=org"}, "base_dn", "basedn"),
        ({"urls": "ldap://127.0.0.1:389"}, "url", "urls"),
        ({"bind_passwd": "x"}, "bind_dn", "bind_passwd"),
        ({"binddn": "cn=reader,dc=example,dc=org"}, "bind_password", "binddn"),
    ],
)
def test_missing_required_option_names_the_unknown_one(ldap_config, given, missing, unknown):
    options = {**ldap_config, **given}
    drop = {"basedn": "base_dn", "urls": "url", "bind_passwd": "bind_password",
            "binddn": "bind_dn"}[next(iter(given))]
    del options[drop]
    for factory, extra in ((make_authenticator, {}),
                           (make_metadata_provider, {"attributes": "mail"})):
        with pytest.raises(ConfigError) as info:
            factory(**options, **extra)
        message = str(info.value)
        assert repr(missing) in message and f"unknown option {unknown!r}" in message, message
        assert message.count("ldap ") == 1  # the section named once, not twice


def test_missing_required_option_alone_is_still_named(ldap_config):
    options = {k: v for k, v in ldap_config.items() if k != "base_dn"}
    with pytest.raises(ConfigError, match="option 'base_dn': is required$"):
        make_authenticator(**options)
    with pytest.raises(ConfigError, match="unknown option 'colour'$"):
        make_authenticator(**ldap_config, colour="blue")

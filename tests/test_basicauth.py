"""Our basic-auth identifier: any Authorization header is a 401, never a 500.

Pure parsing is fuzzed with hypothesis against the plugin itself; the served stack (our
PasteDeploy filter with its default identifier, a real memcached, a real waitress server)
gets raw-socket requests with header bytes no client library would send.
"""

from __future__ import annotations

import base64
import itertools
import socket
from collections.abc import Iterator

import pytest
from conftest import SECRET, serving
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from paste.deploy import loadapp
from repoze.who.interfaces import IChallenger, IIdentifier
from test_pipeline import PIPELINE_INI, write_ini
from zope.interface.verify import verifyObject

from repoze_who_memcached import ConfigError
from repoze_who_memcached.basicauth import (
    MAX_AUTHORIZATION_BYTES,
    BasicAuthPlugin,
    make_plugin,
    parse_basic_credentials,
)
from repoze_who_memcached.pipeline import BUILTIN_PLUGINS


def environ_with(header_bytes: bytes) -> dict[str, str]:
    """The environ a WSGI server builds: header bytes as a latin-1 str (PEP 3333)."""
    return {"HTTP_AUTHORIZATION": header_bytes.decode("latin-1")}


def basic_header(credentials: bytes) -> bytes:
    return b"Basic " + base64.b64encode(credentials)


# ------------------------------------------------------------------ the plugin alone


def test_is_an_identifier_and_challenger_like_repoze_whos():
    plugin = make_plugin(realm="Test Realm")
    assert verifyObject(IIdentifier, plugin) and verifyObject(IChallenger, plugin)
    assert BUILTIN_PLUGINS["basicauth"] == "repoze_who_memcached.basicauth:make_plugin"


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_utf8_and_latin1_credentials(encoding):
    header = basic_header("zoë:pässwörd:with colon".encode(encoding))
    identity = make_plugin().identify(environ_with(header))
    assert identity == {"login": "zoë", "password": "pässwörd:with colon"}


def test_scheme_is_case_insensitive_and_spaces_are_allowed():
    token = base64.b64encode(b"alice:wonderland")
    for header in (b"basic " + token, b"BASIC  " + token + b" ", b" Basic " + token):
        assert parse_basic_credentials(header.decode()) == {
            "login": "alice", "password": "wonderland"}


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"Basic",
        b"Basic ",
        b"Bearer " + base64.b64encode(b"alice:wonderland"),
        b"Basic " + base64.b64encode(b"no colon here"),
        b"Basic " + base64.b64encode(b":password-but-no-login"),
        b"Basic YWxpY2U6d29uZGVybGFuZA",  # padding missing
        b"Basic YWxp Y2U6d29uZGVybGFuZA==",  # space inside the token
        b"Basic YWxpY2U6d29uZGVybGFuZA==\x00",
        b"Basic \xff\xfe\xfd",
        b"Basic " + "é".encode("latin-1") * 12,
        b"Basic !!!!",
        basic_header(b"ali\x00ce:wonderland"),
        basic_header(b"alice:wonder\x00land"),
        basic_header(b"alice:wonder\r\nland"),
        basic_header(b"alice\x1b[31m:wonderland"),
        basic_header(b"alice:\x7f"),
        basic_header("alice\u0085:wonderland".encode()),  # a C1 control, as UTF-8
        basic_header(b"alice\x85:wonderland"),  # the same as latin-1
        b"Basic " + b"A" * (MAX_AUTHORIZATION_BYTES + 1),
    ],
)
def test_malformed_headers_are_no_identity(header):
    assert make_plugin().identify(environ_with(header)) is None


def test_longest_accepted_header():
    password = b"p" * (MAX_AUTHORIZATION_BYTES // 2)
    header = basic_header(b"alice:" + password)
    assert len(header) <= MAX_AUTHORIZATION_BYTES
    assert make_plugin().identify(environ_with(header))["password"] == password.decode()
    too_long = basic_header(b"alice:" + b"p" * MAX_AUTHORIZATION_BYTES)
    assert make_plugin().identify(environ_with(too_long)) is None


@pytest.mark.parametrize("value", [None, 42, ["Basic x"], "Basic \u20ac\u20ac", "Basic \udcff"])
def test_values_no_wsgi_server_would_give_are_no_identity(value):
    environ = {} if value is None else {"HTTP_AUTHORIZATION": value}
    assert make_plugin().identify(environ) is None


def test_bytes_header_is_read_too():
    assert parse_basic_credentials(basic_header(b"bob:builder")) == {
        "login": "bob", "password": "builder"}


def test_challenge_forget_remember():
    plugin = make_plugin(realm='Say "hi" \\ here')
    expected = ("WWW-Authenticate", 'Basic realm="Say \\"hi\\" \\\\ here"')
    assert plugin.forget({}, {}) == [expected]
    assert plugin.remember({}, {"login": "a", "password": "b"}) is None
    response = plugin.challenge({}, "401 Unauthorized", [], [("Set-Cookie", "x=; Max-Age=0")])
    assert response.status_int == 401
    assert response.headers.getall("WWW-Authenticate") == [expected[1]]
    assert response.headers["Set-Cookie"] == "x=; Max-Age=0"
    again = plugin.challenge({}, "401 Unauthorized", [], plugin.forget({}, {}))
    assert again.headers.getall("WWW-Authenticate") == [expected[1]]


@pytest.mark.parametrize("realm", ["line\r\nX-Injected: yes", "tab\there", "caf\u00e9", "\x00"])
def test_realm_that_cannot_go_in_a_header_is_a_config_error(realm):
    with pytest.raises(ConfigError, match="'realm'"):
        make_plugin(realm=realm)


def test_repr_shows_no_credentials():
    plugin = BasicAuthPlugin("r")
    plugin.identify(environ_with(basic_header(b"alice:wonderland")))
    assert "wonderland" not in repr(plugin)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_any_header_bytes_never_raise(header_bytes):
    for header in (header_bytes, b"Basic " + header_bytes,
                   b"Basic " + base64.b64encode(header_bytes)):
        identity = parse_basic_credentials(header.decode("latin-1"))  # unguarded: must not raise
        assert identity is None or (
            set(identity) == {"login", "password"}
            and identity["login"]
            and all(isinstance(v, str) for v in identity.values())
        )


_no_controls = {"blacklist_categories": ("Cc", "Cs"), "blacklist_characters": ":"}
_logins = st.text(st.characters(**_no_controls), min_size=1)
_latin1_logins = st.text(st.characters(max_codepoint=0xFF, **_no_controls), min_size=1)


@settings(max_examples=500, deadline=None)
@given(login=_logins, password=_logins | st.just(""))
def test_any_utf8_credentials_round_trip(login, password):
    header = basic_header(f"{login}:{password}".encode()).decode("latin-1")
    assert parse_basic_credentials(header) == {"login": login, "password": password}


@settings(max_examples=500, deadline=None)
@given(login=_latin1_logins, password=_latin1_logins | st.just(""))
def test_any_latin1_credentials_round_trip(login, password):
    # Latin-1 bytes that also happen to be valid UTF-8 (all ASCII aside) read as UTF-8,
    # as in repoze.who: such text is ambiguous on the wire.
    assume(all(v.isascii() or not _is_utf8(v.encode("latin-1")) for v in (login, password)))
    header = basic_header(f"{login}:{password}".encode("latin-1")).decode("latin-1")
    assert parse_basic_credentials(header) == {"login": login, "password": password}


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ------------------------------------------------------------------ the served stack


def raw_status(port: int, header_value: bytes) -> int:
    """Send one request with ``Authorization: <header_value>`` as raw bytes; its status."""
    request = (b"GET /?format=json HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
               + header_value + b"\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    status_line = received.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1."), received[:200]
    return int(status_line.split()[1])


@pytest.fixture
def stack_port(tmp_path, memcached) -> Iterator[int]:
    """Our filter with its default identifier (basicauth) over the demo app, served."""
    ini = write_ini(tmp_path, PIPELINE_INI.format(url=memcached.url, secret=SECRET, extra=""))
    with serving(loadapp(f"config:{ini}"), channel_timeout=10) as port:
        yield port


HOSTILE_HEADERS = [
    b"Basic \xff\xfe\xfd\xfc",  # non-ASCII: repoze.who's own plugin answers 500 here
    "Basic zoë".encode(),
    b"\xc3\xa9\xc3\xa9 " + base64.b64encode(b"alice:wonderland"),
    b"Basic " + base64.b64encode(b"\xff\xfe:\x00\x01"),
    b"Basic " + base64.b64encode(b"alice\x00:wonderland"),
    b"Basic " + base64.b64encode(b"no-colon"),
    b"Basic ====",
    b"Basic " + b"QUFB" * 25_000,  # 100 KB
    b"\x00" * 100,
    b"Basic \x00" + base64.b64encode(b"alice:wonderland"),
    b"\x01\x02\x7f\x80\x9f\xa0",
    b"",
]


@pytest.mark.parametrize("header", HOSTILE_HEADERS)
def test_served_stack_answers_hostile_headers_with_401(stack_port, header):
    status = raw_status(stack_port, header)
    if b"\x00" in header or any(b < 0x20 and b != 0x09 for b in header):
        assert status in (400, 401)  # waitress itself may refuse control characters
    else:
        assert status == 401


def test_served_stack_still_logs_in(stack_port):
    for credentials in (b"alice:wonderland", "zoë:pässwörd".encode(),
                        "zoë:pässwörd".encode("latin-1")):
        assert raw_status(stack_port, basic_header(credentials)) == 200


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000).filter(lambda b: b"\r" not in b and b"\n" not in b))
def test_served_stack_never_answers_500(stack_port, header_bytes):
    # CR and LF are framing (waitress's business); every other byte reaches the identifier.
    for header in (header_bytes, b"Basic " + header_bytes,
                   b"Basic " + base64.b64encode(header_bytes)):
        assert raw_status(stack_port, header) in (400, 401)


# Every byte a credential's kind turns on: controls, space, the colon, ASCII letters, DEL,
# C1, latin-1 and the lead and continuation bytes of UTF-8 ("é" is C3 A9).
_CREDENTIAL_BYTES = (0x00, 0x09, 0x0A, 0x1F, 0x20, 0x3A, 0x61, 0x7E, 0x7F, 0x80, 0x9F, 0xA0,
                     0xA9, 0xC3, 0xFF)


def _header_forms(token: str) -> list[str]:
    """A base64 token as clients (and attackers) wrap it: spacing, case, broken padding."""
    return ["Basic " + token, "basic  " + token + " ", "\tBASIC\t" + token + "\t", token,
            "Basic " + token.rstrip("="), "Basic " + token + "=", "Basic " + token + "\n",
            "Basic " + token[:-1], "Basic =" + token, "Bearer " + token]


def test_the_ascii_fast_path_answers_as_the_general_parser_for_short_credentials():
    """ASCII headers are taken apart inline, on their own path; bytes go through the
    general one. Both must answer alike for every credential of up to three of the bytes
    that matter, in every wrapping: the fast path may be faster, never different."""
    checked = 0
    for length in range(4):
        for combo in itertools.product(_CREDENTIAL_BYTES, repeat=length):
            token = base64.b64encode(bytes(combo)).decode("ascii")
            for header in _header_forms(token):
                assert parse_basic_credentials(header) == parse_basic_credentials(
                    header.encode("latin-1")), header
                checked += 1
    assert checked == 10 * sum(len(_CREDENTIAL_BYTES) ** n for n in range(4))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=40), st.sampled_from(range(10)))
def test_the_ascii_fast_path_answers_as_the_general_parser(credentials, form):
    header = _header_forms(base64.b64encode(credentials).decode("ascii"))[form]
    assert parse_basic_credentials(header) == parse_basic_credentials(header.encode("latin-1"))

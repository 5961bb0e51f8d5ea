"""Secrets are strong and never printed; the CLI's config errors are one safe line.

Strength rules are pure logic (tested directly, and fuzzed); loading and the CLI run against
real files, a real memcached and the installed console script.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import os
import re
import secrets
import stat
import subprocess
import sys
import tempfile
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from conftest import SECRET
from hypothesis import given, settings
from hypothesis import strategies as st

from repoze_who_memcached import CachingPlugin, ConfigError, make_plugin
from repoze_who_memcached.cli import main as cli_main
from repoze_who_memcached.options import (
    MIN_SECRET_BITS,
    check_secret_strength,
    describe_config_parser_error,
    estimate_secret_bits,
)

TESTS = Path(__file__).parent
SCRIPT = Path(sys.executable).parent / "repoze-who-memcached"
# Text that must never appear in any output: it sits right after a '%' in the tests' secrets.
DISTINCTIVE = "Zebra-Quokka-7731-Marmalade"
MESSAGE_RULES = (
    r"is too short \(\d+ bytes; at least \d+ are required\)"
    r"|uses fewer than 10 different characters, which is not random text"
    rf"|is too easy to guess \(estimated under {MIN_SECRET_BITS} bits: repeats, runs such as "
    r"abcd or 1234, or too few kinds of characters\)"
)
MESSAGE = re.compile(rf"option 'LABEL': ({MESSAGE_RULES}); make one with `repoze-who-memcached "
                     r"generate-secret FILE` and point secret_file at FILE")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=cwd)


def run_main(*args: str) -> tuple[int, str]:
    """The CLI in-process: its exit status and everything it wrote."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = cli_main(list(args))
        except SystemExit as exc:
            status = exc.code
    return status, out.getvalue()


# ------------------------------------------------------------------ strength rules


@pytest.mark.parametrize("make", [
    lambda: secrets.token_urlsafe(32),
    lambda: secrets.token_urlsafe(48),
    lambda: secrets.token_hex(32),
    lambda: secrets.token_bytes(32),
    lambda: secrets.token_urlsafe(32).encode(),
])
def test_random_secrets_always_pass(make):
    for _ in range(3000):
        check_secret_strength(make(), "LABEL")


@pytest.mark.parametrize(("secret", "rule"), [
    ("short", "too short"),
    ("IobSBXZHmgvdPg3f2ffxsLHkCFkwV77", "too short"),  # 31 bytes of random text
    ("x" * 64, "fewer than 10 different"),
    ("passwordpasswordpasswordpassword", "fewer than 10 different"),
    ("abcdefghijklmnopqrstuvwxyz0123456789", "too easy"),
    ("zyxwvutsrqponmlkjihgfedcba9876543210", "too easy"),
    ("acegikmoqsuwy13579bdfhjlnprtvxz24680", "too easy"),
    ("aB3$xY7!kP9#aB3$xY7!kP9#aB3$xY7!kP9#", "too easy"),  # a repeated block
    ("12345678901234567890123456789012", "too easy"),
    ("83920174658392017465839201746583", "too easy"),  # a repeated block of digits
    ("50284719365820947163750294816375", "too easy"),  # 32 random digits: 106 bits
    ("test-secret-0123456789abcdef-test-secret", "too easy"),
])
def test_weak_secrets_are_refused_with_a_reason_and_advice(secret, rule):
    with pytest.raises(ConfigError) as info:
        check_secret_strength(secret, "LABEL")
    message = str(info.value)
    assert rule in message
    assert MESSAGE.fullmatch(message), message


def test_estimate_counts_patterns_as_nothing():
    assert estimate_secret_bits("aaaa") == estimate_secret_bits("a")
    assert estimate_secret_bits("abcdefgh") == estimate_secret_bits("ab")
    assert estimate_secret_bits("Xq7!Xq7!Xq7!") == estimate_secret_bits("Xq7!")


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)))
def test_a_refusal_never_quotes_the_secret(secret):
    """Every refusal is one of three fixed sentences: only the length can be read in it."""
    try:
        check_secret_strength(secret, "LABEL")
    except ConfigError as exc:
        assert MESSAGE.fullmatch(str(exc)), str(exc)


def test_make_plugin_refuses_a_weak_inline_or_file_secret(tmp_path):
    weak = "Password123!Password123!Password123!"
    with pytest.raises(ConfigError, match="option 'secret': is too easy") as info:
        make_plugin(authenticator_name="x", secret=weak)
    assert "Password" not in str(info.value)
    assert "generate-secret" in str(info.value)
    path = tmp_path / "secret"
    path.write_text(weak + "\n")
    with pytest.raises(ConfigError, match=r"'secret_file \(.*secret\)': is too easy") as info:
        make_plugin(authenticator_name="x", secret_file=str(path))
    assert "Password" not in str(info.value)


def test_a_secret_file_that_is_not_utf8_is_named_not_quoted(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"\xfe\xed" + secrets.token_bytes(40))
    with pytest.raises(ConfigError, match="secret_file.*is not UTF-8 text") as info:
        make_plugin(authenticator_name="x", secret_file=str(path))
    assert "0xfe" not in str(info.value) and "position" not in str(info.value)


def test_bind_passwords_are_not_judged():
    # Another system's password is what it is: only our own key must be strong.
    from repoze_who_memcached.options import Options

    opts = Options({"bind_password": "pw"}, "[x]")
    assert opts.secret("bind_password", "bind_password_file", required=False) == "pw"


# ------------------------------------------------------------------ configparser errors


@pytest.mark.parametrize(("text", "expected"), [
    (f"[a]\nsecret = x%{DISTINCTIVE}\n", "[a] option 'secret': a '%' must be written '%%'"),
    (f"[a]\nsecret = %({DISTINCTIVE})s\n", "[a] option 'secret': refers to a %(name)s"),
    ("[a]\nb = %(c)s\nc = %(b)s\n", "[a] option 'b': its %(name)s references nest too deep"),
])
def test_interpolation_errors_are_described_without_the_value(text, expected):
    parser = configparser.ConfigParser()
    parser.read_string(text)
    with pytest.raises(configparser.InterpolationError) as info:
        parser.items("a")
    assert DISTINCTIVE in str(info.value) or "nest" in expected  # what we must not repeat
    message = describe_config_parser_error(info.value)
    assert message.startswith(expected), message
    assert DISTINCTIVE not in message


@pytest.mark.parametrize(("text", "expected"), [
    (f"[a]\nb = 1\n{DISTINCTIVE}\n", "cannot parse line 3"),
    (f"secret = {DISTINCTIVE}\n[a]\n", "line 1: an option before any [section]"),
    (f"[a]\nsecret = {DISTINCTIVE}\nsecret = {DISTINCTIVE}\n", "[a] option 'secret' is given"),
    ("[a]\n[a]\n", "section [a] is given twice"),
])
def test_parsing_errors_are_described_by_line(text, expected):
    parser = configparser.ConfigParser()
    with pytest.raises(configparser.Error) as info:
        parser.read_string(text)
    message = describe_config_parser_error(info.value)
    assert message.startswith(expected), message
    assert DISTINCTIVE not in message


# ------------------------------------------------------------------ the CLI


def app_ini(tmp_path: Path, url: str, cache_lines: str, filter_lines: str = "") -> Path:
    path = tmp_path / "app.ini"
    path.write_text(textwrap.dedent("""
        [app:demo]
        use = egg:repoze_who_memcached#demo

        [filter:auth]
        use = egg:repoze_who_memcached
        authenticator = backends_for_tests:make_authenticator
        memcached_urls = {url}
        {cache_lines}
        {filter_lines}

        [pipeline:main]
        pipeline = auth demo
    """).format(url=url, cache_lines=cache_lines, filter_lines=filter_lines))
    return path


def who_ini(tmp_path: Path, url: str, cache_lines: str, backend_lines: str = "") -> Path:
    path = tmp_path / "who.ini"
    path.write_text(textwrap.dedent("""
        [plugin:basicauth]
        use = repoze_who_memcached.basicauth:make_plugin

        [plugin:backend]
        use = backends_for_tests:make_authenticator
        {backend_lines}

        [plugin:cached]
        use = repoze_who_memcached:make_plugin
        authenticator_name = backend
        memcached_urls = {url}
        {cache_lines}

        [identifiers]
        plugins = basicauth

        [authenticators]
        plugins = cached

        [challengers]
        plugins = basicauth
    """).format(url=url, cache_lines=cache_lines, backend_lines=backend_lines))
    return path


def filter_to_who_ini(who: Path) -> Path:
    path = who.parent / "app.ini"
    path.write_text("[filter:auth]\nuse = egg:repoze_who_memcached\n"
                    "config_file = %(here)s/who.ini\n")
    return path


PERCENT_CONFIGS = {
    "filter secret": lambda tmp, url: app_ini(tmp, url, f"secret = Qx9%{DISTINCTIVE}Lp2Wz"),
    "filter bind_password": lambda tmp, url: app_ini(
        tmp, url, f"secret = {SECRET}", f"authenticator.bind_password = a%{DISTINCTIVE}"),
    "filter unknown reference": lambda tmp, url: app_ini(
        tmp, url, f"secret = %({DISTINCTIVE})s"),
    "who.ini secret": lambda tmp, url: who_ini(tmp, url, f"secret = Qx9%{DISTINCTIVE}Lp2Wz"),
    "who.ini wrapped plugin's password": lambda tmp, url: who_ini(
        tmp, url, f"secret = {SECRET}", f"bind_password = a%{DISTINCTIVE}"),
    "filter config_file to who.ini": lambda tmp, url: filter_to_who_ini(
        who_ini(tmp, url, f"secret = {SECRET}", f"bind_password = a%{DISTINCTIVE}")),
    "secret split over two lines": lambda tmp, url: app_ini(
        tmp, url, f"secret = {SECRET}\n{DISTINCTIVE}"),
}


@pytest.mark.parametrize("config", list(PERCENT_CONFIGS))
@pytest.mark.parametrize("command", [["check"], ["stats"], ["flush"], ["invalidate", "@", "x"]])
def test_cli_never_prints_the_value_of_a_bad_config(tmp_path, memcached, config, command):
    ini = PERCENT_CONFIGS[config](tmp_path, memcached.url)
    args = [command[0], str(ini), *[a for a in command[1:] if a != "@"]]
    status, output = run_main(*args)
    assert status == 2, output
    assert DISTINCTIVE not in output
    assert "Traceback" not in output and output.count("\n") == 1, output
    assert output.startswith("repoze-who-memcached: error: ")
    assert "option" in output or "line" in output


def test_cli_script_bad_percent_is_one_line_exit_2(tmp_path, memcached):
    ini = PERCENT_CONFIGS["filter secret"](tmp_path, memcached.url)
    result = cli("check", str(ini))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f"repoze-who-memcached: error: {ini}: [filter:auth] option "
                             "'secret': a '%' must be written '%%' (or start a %(name)s "
                             "reference); the value is not shown\n")


def test_cli_refuses_a_weak_secret_without_showing_it(tmp_path, memcached):
    ini = app_ini(tmp_path, memcached.url, "secret = Password123!Password123!Password123!")
    status, output = run_main("check", str(ini))
    assert status == 2
    assert "option 'secret': is too easy to guess" in output
    assert "generate-secret" in output and "Password" not in output


@settings(max_examples=40, deadline=None)
@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40))
def test_cli_output_never_holds_a_percent_secret(memcached_session, tail):
    marker = "Mq" + secrets.token_hex(8)  # nothing in a message could contain this by chance
    secret = f"{marker}%{tail}{marker}"
    with tempfile.TemporaryDirectory() as tmp:
        ini = app_ini(Path(tmp), memcached_session.url, f"secret = {secret}")
        _, output = run_main("check", str(ini))
    assert marker not in output
    assert "Traceback" not in output


def test_check_warns_about_a_secret_file_others_can_read(tmp_path, memcached):
    secret_file = tmp_path / "cache-secret"
    secret_file.write_text(SECRET + "\n")
    ini = app_ini(tmp_path, memcached.url, "secret_file = %(here)s/cache-secret")
    secret_file.chmod(0o644)
    status, output = run_main("check", str(ini))
    assert status == 0, output
    assert (f"warning: secret_file {secret_file} can be read or changed by group and others "
            f"(mode 0644): chmod 600 {secret_file}") in output
    secret_file.chmod(0o640)
    assert "by group (mode 0640)" in run_main("check", str(ini))[1]
    secret_file.chmod(0o600)
    status, output = run_main("check", str(ini))
    assert status == 0 and "secret_file" not in output, output
    assert SECRET not in output


def test_version():
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"repoze-who-memcached {metadata.version('repoze_who_memcached')}\n"


# ------------------------------------------------------------------ generate-secret


def test_generate_secret_writes_a_strong_0600_file_and_never_prints_it(tmp_path):
    path = tmp_path / "cache-secret"
    old_umask = os.umask(0o022)
    try:
        result = cli("generate-secret", str(path))
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    assert len(secret) == 64 and path.read_text() == secret + "\n"
    check_secret_strength(secret, "generated")
    assert secret not in result.stdout + result.stderr
    assert str(path) in result.stdout
    assert isinstance(make_plugin(authenticator_name="x", secret_file=str(path)), CachingPlugin)


def test_generate_secret_refuses_to_overwrite_unless_forced(tmp_path):
    path = tmp_path / "cache-secret"
    path.write_text("the old one\n")
    path.chmod(0o644)
    status, output = run_main("generate-secret", str(path))
    assert status == 2 and "exists" in output and "--force" in output
    assert path.read_text() == "the old one\n"
    status, output = run_main("generate-secret", "--force", str(path))
    assert status == 0, output
    new = path.read_text().strip()
    assert new != "the old one" and new not in output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["cache-secret"]  # no temporary left


def test_generate_secret_never_writes_through_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("do not touch\n")
    link = tmp_path / "cache-secret"
    link.symlink_to(target)
    status, _ = run_main("generate-secret", str(link))
    assert status == 2
    assert target.read_text() == "do not touch\n"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert run_main("generate-secret", str(dangling))[0] == 2
    assert not (tmp_path / "nowhere").exists()


def test_generate_secret_into_a_missing_directory_is_one_line(tmp_path):
    status, output = run_main("generate-secret", str(tmp_path / "no" / "such" / "secret"))
    assert status == 2 and output.count("\n") == 1 and "Traceback" not in output


def test_two_generated_secrets_differ(tmp_path):
    for name in ("one", "two"):
        assert run_main("generate-secret", str(tmp_path / name))[0] == 0
    assert (tmp_path / "one").read_text() != (tmp_path / "two").read_text()

"""``repoze-who-memcached``: check, invalidate, flush and inspect the cache from a shell.

CONFIG is the ini file your app runs from (a PasteDeploy file whose filter uses
``egg:repoze_who_memcached``, or a who.ini with a ``repoze_who_memcached:make_plugin``
section), optionally with ``#section`` to pick one section (``development.ini#auth`` for
``[filter:auth]``, ``who.ini#cached_ldap`` for ``[plugin:cached_ldap]``). The cache plugins
are built from it exactly as your app builds them, so they compute the same keys.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import ipaddress
import os
import secrets
import stat
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata

from .backends import ServerAddress
from .errors import ConfigError
from .options import check_secret_strength, describe_config_parser_error
from .plugin import CachingPlugin

PROG = "repoze-who-memcached"
OUR_FILTER_USES = {"egg:repoze_who_memcached", "egg:repoze_who_memcached#main"}
OUR_PLUGIN_USES = {"repoze_who_memcached:make_plugin", "repoze_who_memcached.plugin:make_plugin"}
DIST_NAME = "repoze_who_memcached"
# Options naming a file that holds a secret or a password (``check`` looks at their modes).
SECRET_FILE_SUFFIXES = ("secret_file", "password_file")
# 48 random bytes, 64 URL-safe characters: far past every rule of check_secret_strength.
GENERATED_SECRET_BYTES = 48
SHOWN_STATS = ("version", "uptime", "curr_connections", "curr_items", "bytes", "limit_maxbytes",
               "get_hits", "get_misses", "evictions", "cmd_get", "cmd_set")


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


class LoadedSection:
    """One config section that holds cache plugins, with its raw options (for ``check``)."""

    def __init__(self, label: str, plugins: list[CachingPlugin], raw: dict[str, str]) -> None:
        self.label = label
        self.plugins = plugins
        self.raw = raw


def load_sections(config: str) -> list[LoadedSection]:
    """Our cache sections of CONFIG, built as the app builds them.

    Any failure to load is a :class:`CliError` of one line that never quotes a value:
    configparser's messages do (a ``%`` in a secret makes it print the rest of the secret),
    so parser errors are described by section, option and line only.
    """
    path, _, wanted = config.partition("#")
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise CliError(f"no such file: {path}")
    here = os.path.dirname(path)
    # The interpolation PasteDeploy and repoze.who apply, so values read here (paths for
    # the permission checks) are the ones the app uses.
    parser = configparser.ConfigParser(defaults={"here": here, "__file__": path}, strict=False)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise CliError(f"{path}: {describe_config_parser_error(exc)}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path}: not UTF-8 text") from None
    sections = []
    for section in parser.sections():
        kind, _, name = section.partition(":")
        if wanted and wanted not in (name, section):
            continue
        use = parser.get(section, "use", raw=True, fallback="").strip()
        if kind == "filter" and use in OUR_FILTER_USES:
            load = _filter_plugins
        elif kind == "plugin" and use in OUR_PLUGIN_USES:
            load = _who_ini_plugins
        else:
            continue
        try:
            raw = dict(parser.items(section))
        except configparser.Error as exc:
            raise CliError(f"{path}: {describe_config_parser_error(exc)}") from None
        try:
            plugins = load(path, here, name)
        except Exception as exc:  # whatever the app's loaders raise: one safe line, no traceback
            located = isinstance(exc, ConfigError) and exc.section  # our loaders say where
            where = "" if located and path in str(exc.section) else (
                f"{path}: " if located else f"{path}: [{section}]: ")
            raise CliError(f"{where}{safe_message(exc)}") from None
        sections.append(LoadedSection(section, plugins, raw))
    if not sections:
        where = f"section {wanted!r}" if wanted else "any section"
        raise CliError(f"{path}: {where} is not a repoze_who_memcached filter or plugin")
    return sections


def safe_message(exc: BaseException) -> str:
    """One line about ``exc`` that quotes no config value.

    A configparser error anywhere in its chain (our loaders re-raise them as ConfigError
    ``from None``, which keeps the original as ``__context__``) is described by
    :func:`describe_config_parser_error` instead of by its own message.
    """
    if isinstance(exc, CliError):  # ours: made safe where it was raised
        return " ".join(str(exc).split()) or type(exc).__name__
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, configparser.Error):
            return describe_config_parser_error(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(exc).split())
    if isinstance(exc, ConfigError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _filter_plugins(path: str, here: str, name: str) -> list[CachingPlugin]:
    from paste.deploy import loadfilter

    factory = loadfilter(f"config:{path}", name=name)
    return list(getattr(factory, "cache_plugins", []))


def _who_ini_plugins(path: str, here: str, name: str) -> list[CachingPlugin]:
    from .pipeline import load_who_config

    config = load_who_config(path, here)
    plugin = config.plugins[name]
    return [plugin] if isinstance(plugin, CachingPlugin) else []


def weak_settings(section: LoadedSection, plugin: CachingPlugin) -> list[str]:
    """Settings that work but that an operator should know are risky."""
    raw = section.raw
    warnings = []
    if "secret" in raw:
        warnings.append("the secret is written in the config; prefer secret_file (mode 0600, "
                        f"made by `{PROG} generate-secret FILE`)")
    for option, value in sorted(raw.items()):
        if option.endswith(SECRET_FILE_SUFFIXES) and value.strip():
            warning = _exposed_file_warning(option, value.strip())
            if warning:
                warnings.append(warning)
    caches_logins = plugin.authenticator is not None or bool(plugin.authenticator_name)
    if caches_logins and plugin.key_items and "password" not in plugin.key_items:
        warnings.append(f"key_items = {' '.join(plugin.key_items)}: the password does not key "
                        "cached logins, so anyone who sends a cached login gets in without it")
    if plugin.ttl > 3600:
        warnings.append(f"ttl = {plugin.ttl}: a disabled account keeps working that long "
                        "unless invalidated")
    if plugin.stale_ttl > 24 * 3600:
        warnings.append(f"stale_ttl = {plugin.stale_ttl}: old entries are honoured for over "
                        "a day while the backend is down")
    warnings.extend(conflicting_settings(plugin))
    servers = plugin.backend.settings.servers
    if len(servers) == 1:
        warnings.append("one memcached server: losing it sends every request to the backend")
    if not plugin.backend.settings.tls and any(not _is_local(s) for s in servers):
        warnings.append("memcached traffic crosses the network unencrypted (values are "
                        "sealed, but consider memcached_client = pymemcache with TLS)")
    if plugin.backend.settings.socket_timeout > 1:
        warnings.append(f"socket_timeout = {plugin.backend.settings.socket_timeout}s: a hung "
                        "memcached delays requests that long")
    return warnings


def _exposed_file_warning(option: str, value: str) -> str | None:
    """A warning when the file ``option`` names can be read or changed by group or others.

    Anyone who reads the cache secret can forge cache entries (log in as anyone); anyone who
    can change it can lock every server out. The path is resolved as the loaders resolve it.
    """
    path = os.path.expanduser(value)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None  # loading would already have failed if the app needed it
    who = [name for name, bits in (("group", 0o070), ("others", 0o007)) if mode & bits]
    if not who:
        return None
    return (f"{option} {path} can be read or changed by {' and '.join(who)} (mode "
            f"{mode:04o}): chmod 600 {path}")


def conflicting_settings(plugin: CachingPlugin) -> list[str]:
    """Settings of the operations features that defeat each other."""
    region, warnings = plugin.region, []
    near = region.near
    if region.refresh_window and near is not None and (
            near.ttl >= region.ttl - region.refresh_window):
        warnings.append(f"local_ttl = {near.ttl:g} hides memcached hits for most of an entry's "
                        "life, so refresh_ahead rarely sees one: hot users will see misses; "
                        "lower local_ttl below ttl * (1 - refresh_ahead)")
    if region.stale_ttl and not plugin.password_item:
        warnings.append("password_item is off and stale_ttl is on: after a password change, "
                        "the old password is served stale while the backend fails")
    if any(old.namespace_key == region.namespace_key for old in region.previous):
        warnings.append("previous_secrets lists the current secret: remove it")
    if region.ttl_jitter and region.refresh_window and region.ttl_jitter * region.ttl > (
            region.ttl - region.refresh_window):
        warnings.append("ttl_jitter can cut an entry's life below the point where "
                        "refresh_ahead starts: lower ttl_jitter")
    return warnings


def _is_local(server: ServerAddress) -> bool:
    if server.unix_path is not None or server.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(server.host).is_loopback
    except ValueError:
        return False


def cmd_check(args: argparse.Namespace) -> int:
    status = 0
    for section in load_sections(args.config):
        for plugin in section.plugins:
            print(f"[{section.label}] cache {plugin.name!r}: {plugin.settings_summary()}")
            proxy = plugin.backend.settings.proxy
            for report in plugin.backend.probe():
                if report.ok and proxy:
                    print(f"  ok    {report.address}  {proxy}, a backend answers memcached "
                          f"{report.version}; the backends behind it cannot be checked "
                          "through it (read its stats port)")
                elif report.ok:
                    print(f"  ok    {report.address}  memcached {report.version}")
                else:
                    print(f"  DOWN  {report.address}  {report.error}")
                    status = 1
            for warning in weak_settings(section, plugin):
                print(f"  warning: {warning}")
            if not check_wrapped(plugin):
                status = 1
            plugin.backend.close()
    return status


def check_wrapped(plugin: CachingPlugin) -> bool:
    """Run ``health_check()`` of the plugins the cache wraps (e.g. our LDAP plugins) and
    print one line per problem; False if any. A plugin without one is skipped, one given
    by name only (``authenticator_name``) is not built here and cannot be checked."""
    healthy = True
    checked: list[object] = []
    for role in ("authenticator", "mdprovider"):
        wrapped = getattr(plugin, role, None)
        if wrapped is None or any(wrapped is seen for seen in checked):
            continue  # dedupe: one object may be both
        checked.append(wrapped)
        health_check = getattr(wrapped, "health_check", None)
        if not callable(health_check):
            continue
        try:
            problems = list(health_check())
        except Exception as exc:  # a check must report, not crash the command
            problems = [f"health check raised {type(exc).__name__}"]
        finally:
            close = getattr(wrapped, "close", None)
            if callable(close):
                close()
        if problems:
            healthy = False
            for problem in problems:
                print(f"  DOWN  {role} {wrapped!r}: {problem}")
        else:
            print(f"  ok    {role} {wrapped!r}")
    return healthy


def cmd_stats(args: argparse.Namespace) -> int:
    status = 0
    for section in load_sections(args.config):
        for plugin in section.plugins:
            print(f"[{section.label}] cache {plugin.name!r}")
            proxy = plugin.backend.settings.proxy
            if proxy:
                # twemproxy drops the connection on `stats`: say so, and where to look.
                names = ", ".join(str(s) for s in plugin.backend.settings.servers)
                print(f"  {names}: behind {proxy}, memcached stats cannot be read through "
                      "it; read its stats port (nutcracker -s, JSON)")
                plugin.backend.close()
                continue
            for report in plugin.backend.probe():
                if not report.ok:
                    print(f"  {report.address}: DOWN ({report.error})")
                    status = 1
                    continue
                print(f"  {report.address}:")
                names = sorted(report.stats) if args.all else SHOWN_STATS
                for name in names:
                    if name in report.stats:
                        print(f"    {name:<18} {report.stats[name]}")
                hits = int(report.stats.get("get_hits", 0))
                misses = int(report.stats.get("get_misses", 0))
                if hits + misses:
                    print(f"    {'hit_ratio':<18} {hits / (hits + misses):.3f}")
            plugin.backend.close()
    return status


def _report_unreached(failed: list[str]) -> int:
    for server in failed:
        print(f"  warning: {server} was not reached: entries it holds will be used again "
              "if it comes back; repeat this command then", file=sys.stderr)
    return 1 if failed else 0


def cmd_invalidate(args: argparse.Namespace) -> int:
    status = 0
    for section in load_sections(args.config):
        for plugin in section.plugins:
            for login in args.logins:
                userid = login if args.userid is None else args.userid
                failed = plugin.invalidate_user(login=login, userid=userid)
                print(f"[{section.label}] cache {plugin.name!r}: invalidated login {login!r} "
                      f"and userid {userid!r}")
                status = _report_unreached(failed) or status
            plugin.backend.close()
    return status


def cmd_flush(args: argparse.Namespace) -> int:
    status = 0
    for section in load_sections(args.config):
        for plugin in section.plugins:
            failed = plugin.invalidate_all()
            print(f"[{section.label}] cache {plugin.name!r}: every entry it stored is now "
                  "unused (other data in memcached is untouched)")
            status = _report_unreached(failed) or status
            plugin.backend.close()
    return status


def cmd_generate_secret(args: argparse.Namespace) -> int:
    """Write a fresh random secret to PATH, readable by its owner only; never print it."""
    path = os.path.abspath(os.path.expanduser(args.path))
    secret = secrets.token_urlsafe(GENERATED_SECRET_BYTES)
    check_secret_strength(secret, "the generated secret")  # holds for every token we make
    data = (secret + "\n").encode("ascii")
    if args.force:
        _replace_file(path, data)
    else:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CliError(f"{path} exists: not replaced (--force replaces it; every server "
                           "sharing the cache then needs the new file)") from None
        _write_all(fd, data)
    print(f"wrote a new secret to {path} (mode 0600). Point secret_file at it; every server "
          "sharing the cache needs a copy of this same file.")
    return 0


def _write_all(fd: int, data: bytes) -> None:
    """Write, force mode 0600 whatever the umask did, flush to disk, close."""
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_file(path: str, data: bytes) -> None:
    """Replace ``path`` atomically: a new 0600 file beside it, renamed over it."""
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".secret-")
    try:
        _write_all(fd, data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def package_version() -> str:
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Operate the repoze_who_memcached authentication cache.",
        epilog=(
            "CONFIG is your app's ini file (PasteDeploy with the egg:repoze_who_memcached "
            "filter, or a who.ini), optionally FILE#SECTION. The commands build the cache "
            "exactly as your app does (same secret, same servers), so they act on the live "
            "cache of every app server sharing it. Examples:\n"
            f"  {PROG} check production.ini\n"
            f"  {PROG} invalidate production.ini#auth alice bob\n"
            f"  {PROG} flush who.ini\n"
            f"  {PROG} generate-secret /etc/myapp/cache-secret"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check", help="connect to every memcached server; report status, version, weak settings",
        description="Load CONFIG, connect to each memcached server and report its status and "
        "version, and warn about weak settings. Exit status 1 if a server is down.")
    check.add_argument("config", metavar="CONFIG")
    check.set_defaults(func=cmd_check)

    invalidate = commands.add_parser(
        "invalidate", help="stop using every cached entry of the given logins",
        description="Every cached authentication of each LOGIN (whatever password was used) "
        "and its cached metadata stop being used at once, on every server sharing the cache "
        "(within local_check_interval where the near cache, local_ttl, is on).")
    invalidate.add_argument("config", metavar="CONFIG")
    invalidate.add_argument("logins", metavar="LOGIN", nargs="+")
    invalidate.add_argument("--userid", help="the userid whose metadata to drop, when it is "
                            "not the login (e.g. a DN)")
    invalidate.set_defaults(func=cmd_invalidate)

    flush = commands.add_parser(
        "flush", help="stop using everything this cache stored (never other apps' data)",
        description="Replace the cache's namespace generation: every entry it stored is "
        "ignored from now on. Unlike memcached's flush_all, other data is untouched.")
    flush.add_argument("config", metavar="CONFIG")
    flush.set_defaults(func=cmd_flush)

    stats = commands.add_parser(
        "stats", help="memcached's own figures for each server",
        description="Print each memcached server's statistics (hits, misses, items, memory).")
    stats.add_argument("config", metavar="CONFIG")
    stats.add_argument("--all", action="store_true", help="every statistic, not a selection")
    stats.set_defaults(func=cmd_stats)

    generate = commands.add_parser(
        "generate-secret", help="write a new random cache secret to a file (mode 0600)",
        description="Write a new random secret (64 URL-safe characters, 384 bits) to PATH, "
        "created with mode 0600; an existing file is never overwritten unless --force. The "
        "secret is never printed. Point secret_file at PATH and copy the same file to every "
        "server sharing the cache.")
    generate.add_argument("path", metavar="PATH")
    generate.add_argument("--force", action="store_true",
                          help="replace PATH if it exists (atomically)")
    generate.set_defaults(func=cmd_generate_secret)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ConfigError, configparser.Error, RuntimeError, OSError,
            LookupError) as exc:
        print(f"{PROG}: error: {safe_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

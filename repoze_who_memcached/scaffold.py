"""``paster create -t repoze_who_memcached_ldap``: scaffold a working LDAP + memcached deployment.

The generated project holds development.ini and production.ini (our filter: basic auth, the
LDAP authenticator and metadata provider wrapped by the memcached cache), a who.ini variant,
a private development directory (``dev/users.ldif`` and ``dev/slapd.conf``), a one-command
dev stack (``make serve``) and a tiny app package that shows who logged in.

Why most of this module is validation and escaping: every value a user types ends up in
four languages, each with its own quoting. PasteDeploy and repoze.who read ini files with
ConfigParser, which interpolates ``%``, strips surrounding whitespace and has no multi-line
values; LDIF needs base64 for anything not plain ASCII; slapd.conf unquotes backslashes; and
Python needs string literals. So templates never paste a raw value: they pass it through the
filter for their language (``{{value|ini}}``, ``{{value|slapd}}``, ``{{value|py}}``), and LDIF
records are written by :func:`ldif_entry`. A value no escaping can carry (a newline, a
password with leading spaces ConfigParser would strip, a DN ldap3 cannot parse) is refused
with a message naming the variable, before any file is written.

The templates live in the top-level ``paster_templates/`` folder of the source tree, which
setup.py installs as the package ``repoze_who_memcached.paster_templates``; we find it with
``importlib.resources``, which works the same from an editable checkout and from a wheel.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import hashlib
import importlib.metadata
import importlib.resources
import json
import keyword
import os
import re
import secrets
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn as ldap3_parse_dn
from paste.script.command import BadCommand, NoDefault
from paste.script.templates import Template, var
from paste.util.template import paste_script_template_renderer

from . import __version__
from .ldap import unescape_dn_value

TEMPLATE_PACKAGE = "repoze_who_memcached.paster_templates"
TEMPLATE_NAME = "repoze_who_memcached_ldap"

#: The sample users of ``dev/users.ldif`` (login -> password), as the README lists them.
SAMPLE_USERS = {"alice": "wonderland", "bob": "builder", "zo\u00eb": "p\u00e4ssw\u00f6rd"}

# Package names a project must not take: it would shadow what it runs on.
_RESERVED_PACKAGES = frozenset(
    {"repoze_who_memcached", "repoze", "paste", "ldap3", "memcache", "waitress", "webob",
     "setuptools", "test", "tests"}
)
_PROJECT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*$")
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
_LDAP_URL = re.compile(rf"^(ldaps?)://({_HOST})(?::([0-9]{{1,5}}))?/?$", re.IGNORECASE)
_HOST_PORT = re.compile(rf"^({_HOST})(?::([0-9]{{1,5}}))?$")
# A PEP 508 requirement of our distribution: its name (any spelling), then extras,
# a version or "@ URL", or nothing.
_OUR_REQUIREMENT = re.compile(r"^repoze[-_.]who[-_.]memcached\s*(?:$|[\[<>=!~@;\s])", re.I)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")

# Object classes of the entries the dev directory needs above the users, by RDN type.
_CONTAINER_CLASSES = {
    "dc": ("domain",),
    "o": ("organization",),
    "ou": ("organizationalUnit",),
    "l": ("locality",),
    "c": ("country",),
    "cn": ("organizationalRole",),
}
# Object classes of the service account (``ldap_bind_dn``), by its RDN type.
_ACCOUNT_CLASSES = {
    "cn": ("organizationalRole", "simpleSecurityObject"),
    "uid": ("account", "simpleSecurityObject"),
}


class TemplateValueError(ValueError):
    """A template variable no escaping can carry; the message names the variable."""


# ------------------------------------------------------------------ escaping, per language


def _check_line(value: str, name: str) -> None:
    if _CONTROL.search(value):
        raise TemplateValueError(
            f"{name}: {value!r} contains a line break or control character; ini files, "
            "LDIF and slapd.conf hold one line per value"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise TemplateValueError(f"{name}: {value!r} is not valid UTF-8") from None


def ini_value(value: object) -> str:
    """A value for ``key = VALUE`` in an ini file PasteDeploy or repoze.who reads.

    ConfigParser interpolates ``%`` (so it is doubled) and strips surrounding whitespace
    (so such a value cannot be written and is refused). ``;`` and ``#`` need nothing: they
    start a comment only at the beginning of a line.
    """
    text = str(value)
    _check_line(text, "ini value")
    if text != text.strip():
        raise TemplateValueError(f"{text!r}: an ini file cannot keep leading or trailing spaces")
    return text.replace("%", "%%")


def slapd_quote(value: object) -> str:
    """A double-quoted slapd.conf argument: slapd drops a backslash before any character."""
    text = str(value)
    _check_line(text, "slapd.conf value")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def py_literal(value: object) -> str:
    """A Python string literal (for setup.py and the app package)."""
    text = str(value)
    _check_line(text, "Python literal")
    return repr(text)


def _ldif_safe(value: str) -> bool:
    """RFC 2849 SAFE-STRING, minus trailing spaces (which it says to base64 too)."""
    return (
        value == ""
        or (
            all(" " <= c <= "\x7e" for c in value)
            and value[0] not in " :<"
            and not value.endswith(" ")
        )
    )


def ldif_line(attribute: str, value: str) -> str:
    """``attr: value``, or ``attr:: base64`` when LDIF cannot carry the value as text."""
    if _ldif_safe(value):
        return f"{attribute}: {value}"
    return f"{attribute}:: {base64.b64encode(value.encode('utf-8')).decode('ascii')}"


def ldif_entry(dn: str, **attributes: str | Iterable[str]) -> str:
    """One LDIF record; a list value gives the attribute several values."""
    lines = [ldif_line("dn", dn)]
    for attribute, values in attributes.items():
        for value in [values] if isinstance(values, str) else values:
            lines.append(ldif_line(attribute, value))
    return "\n".join(lines)


def ssha(password: str) -> str:
    """An ``{SSHA}`` userPassword hash, the scheme Debian's slapd checks without modules.

    Salted SHA-1 is weak by today's standards; it is used only in the dev directory, whose
    sample passwords are printed in the README anyway.
    """
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()  # noqa: S324 - LDAP {SSHA}
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


# ------------------------------------------------------------------ DNs


@dataclass(frozen=True)
class Dn:
    """A parsed DN: ``(type, value as written, value unescaped)`` per RDN, leaf first."""

    rdns: tuple[tuple[str, str, str], ...]

    @property
    def text(self) -> str:
        return ",".join(f"{attr}={escaped}" for attr, escaped, _ in self.rdns)

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        """For comparisons: case-folded types and unescaped values."""
        return tuple((attr.lower(), value.lower()) for attr, _, value in self.rdns)

    def ancestors(self) -> list[Dn]:
        """Self, then the parent, ... up to the single-RDN root."""
        return [Dn(self.rdns[i:]) for i in range(len(self.rdns))]

    def is_within(self, other: Dn) -> bool:
        n = len(other.rdns)
        return n <= len(self.rdns) and self.key[len(self.rdns) - n :] == other.key

    def suffix(self) -> Dn:
        """The naming context we give this DN: its trailing run of ``dc=`` RDNs, else its root."""
        n = 0
        for attr, _, _ in reversed(self.rdns):
            if attr.lower() != "dc":
                break
            n += 1
        return Dn(self.rdns[len(self.rdns) - max(n, 1) :])


def _unescape_dn_value(value: str, name: str) -> str:
    try:
        return unescape_dn_value(value, errors="strict")
    except UnicodeDecodeError:
        raise TemplateValueError(f"{name}: {value!r}: its \\XX escapes are not UTF-8") from None


def parse_dn(text: str, name: str) -> Dn:
    """Parse and check a DN the way our LDAP plugins will (ldap3's parser, strictly)."""
    text = text.strip()
    if not text:
        raise TemplateValueError(f"{name}: must not be empty")
    _check_line(text, name)
    try:
        parts = ldap3_parse_dn(text)
    except LDAPInvalidDnError as exc:
        raise TemplateValueError(
            f"{name}: {text!r} is not a DN ({exc}); write attr=value pairs separated by "
            'commas, with a backslash before any of , + " \\ < > ; = in a value'
        ) from None
    rdns = []
    for attr, escaped, separator in parts:
        if separator == "+":
            raise TemplateValueError(f"{name}: {text!r}: multi-valued RDNs ('+') are not supported")
        if escaped.startswith("#"):
            raise TemplateValueError(f"{name}: {text!r}: #hex values are not supported")
        value = _unescape_dn_value(escaped, name)
        if attr.lower() == "dc" and not value.isascii():
            raise TemplateValueError(f"{name}: {text!r}: dc values must be ASCII (IA5String)")
        rdns.append((attr, escaped, value))
    return Dn(tuple(rdns))


def _naming(dn: Dn) -> dict[str, str]:
    attr, _, value = dn.rdns[0]
    return {attr: value}


def directory_layout(base: Dn, group_base: Dn, bind: Dn) -> tuple[Dn, str]:
    """The dev directory's suffix, and LDIF for every entry above the users and groups.

    The suffix is the naming context all three DNs share (a trailing run of ``dc=`` RDNs,
    else the root RDN; the shortest when one holds another). Debian's slapd keeps one suffix
    per mdb database, so DNs under unrelated roots are refused. The LDIF holds the suffix
    entry and every container down to the users' base, the groups' base and the service
    account's parent; the account itself is :func:`service_account_entry`.
    """
    suffixes: list[Dn] = []
    for dn in sorted((d.suffix() for d in (base, group_base, bind)), key=lambda d: len(d.rdns)):
        if not any(dn.is_within(s) for s in suffixes):
            suffixes.append(dn)
    if len(suffixes) > 1:
        raise TemplateValueError(
            "ldap_base_dn, ldap_group_base_dn and ldap_bind_dn must share one naming context "
            f"for the private dev directory (one slapd database); here they are under "
            f"{' and '.join(repr(s.text) for s in suffixes)}"
        )
    (suffix,) = suffixes
    if bind.key == suffix.key:
        raise TemplateValueError(
            f"ldap_bind_dn: {bind.text!r} would be the whole naming context; put the service "
            "account below it (e.g. cn=reader,ou=system,dc=example,dc=org)"
        )
    containers: dict[tuple, Dn] = {}
    for dn in (base, group_base, Dn(bind.rdns[1:])):
        for node in reversed(dn.ancestors()):
            if node.is_within(suffix):
                containers.setdefault(node.key, node)
    if bind.key in containers:
        raise TemplateValueError(
            f"ldap_bind_dn: {bind.text!r} is also the users' or groups' base DN"
        )
    records = []
    for node in containers.values():
        attr = node.rdns[0][0].lower()
        classes = _CONTAINER_CLASSES.get(attr)
        if classes is None:
            raise TemplateValueError(
                f"{node.text!r}: the dev directory can only create entries named "
                f"{', '.join(k + '=' for k in _CONTAINER_CLASSES)} above the users"
            )
        records.append(ldif_entry(node.text, objectClass=list(classes), **_naming(node)))
    return suffix, "\n\n".join(records)


def service_account_entry(bind: Dn, password: str) -> str:
    attr = bind.rdns[0][0].lower()
    classes = _ACCOUNT_CLASSES.get(attr)
    if classes is None:
        raise TemplateValueError(
            f"ldap_bind_dn: {bind.text!r}: the dev directory's service account must be "
            "named cn=... or uid=..."
        )
    return ldif_entry(
        bind.text,
        objectClass=list(classes),
        **_naming(bind),
        description="the service account that searches the directory",
        userPassword=ssha(password),
    )


# ------------------------------------------------------------------ other values


def _ldap_urls(value: str, name: str) -> list[tuple[str, str, int]]:
    words = value.replace(",", " ").split()
    if not words:
        raise TemplateValueError(f"{name}: give at least one ldap:// or ldaps:// URL")
    result = []
    for word in words:
        match = _LDAP_URL.match(word)
        if match is None:
            raise TemplateValueError(
                f"{name}: {word!r} is not ldap://host[:port] or ldaps://host[:port]"
            )
        scheme, host, port = match.group(1).lower(), match.group(2), match.group(3)
        number = int(port) if port else (636 if scheme == "ldaps" else 389)
        if not 0 < number < 65536:
            raise TemplateValueError(f"{name}: {word!r}: bad port")
        result.append((scheme, host, number))
    return result


def _url_text(urls: list[tuple[str, str, int]]) -> str:
    return " ".join(f"{scheme}://{host}:{port}" for scheme, host, port in urls)


def _memcached_urls(value: str, name: str) -> str:
    words = value.replace(",", " ").split()
    if not words:
        raise TemplateValueError(f"{name}: give at least one host:port")
    result = []
    for word in words:
        match = _HOST_PORT.match(word)
        if match is None or (match.group(2) and not 0 < int(match.group(2)) < 65536):
            raise TemplateValueError(f"{name}: {word!r} is not host:port")
        result.append(f"{match.group(1)}:{match.group(2) or 11211}")
    return " ".join(result)


def _port(value: str, name: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise TemplateValueError(f"{name}: {value!r} is not a port number") from None
    if not 0 < number < 65536:
        raise TemplateValueError(f"{name}: {number} is not a port number (1-65535)")
    return number


def _password(value: str, name: str) -> tuple[str, bool]:
    """The password, and whether we made it up (an empty answer asks for a random one)."""
    if value == "":
        return secrets.token_urlsafe(18), True
    _check_line(value, name)
    if value != value.strip():
        raise TemplateValueError(
            f"{name}: leading or trailing spaces cannot be kept in an ini file (ConfigParser "
            "strips them); choose another password"
        )
    return value, False


def _project(vars: Mapping[str, Any]) -> None:
    project, package = str(vars.get("project", "")), str(vars.get("package", ""))
    if not _PROJECT_NAME.match(project):
        raise TemplateValueError(
            f"project name {project!r}: use letters, digits, '.', '-' and '_', starting with "
            "a letter (and -o DIR to say where it goes)"
        )
    if not package.isidentifier() or keyword.iskeyword(package) or package in _RESERVED_PACKAGES:
        raise TemplateValueError(
            f"project name {project!r} gives the package name {package!r}, which would "
            "shadow a module this project needs (or is not a valid name); choose another"
        )


# ------------------------------------------------------------------ the template


TEMPLATE_VARS = [
    var("ldap_url", "LDAP server(s) for development.ini, ldap:// or ldaps://, separated by "
        "spaces; `make serve` starts a private slapd for a 127.0.0.1 one",
        default="ldap://127.0.0.1:3890"),
    var("ldap_base_dn", "DN under which users are searched by uid",
        default="ou=people,dc=example,dc=org"),
    var("ldap_bind_dn", "DN of the service account that searches the directory",
        default="cn=reader,ou=system,dc=example,dc=org"),
    var("ldap_bind_password", "its password (empty: a random one, for the dev directory)",
        default="", should_echo=False),
    var("ldap_group_base_dn", "DN under which groups are searched (empty: ou=groups under "
        "the base DN's suffix)", default=""),
    var("memcached_urls", "memcached host:port for development.ini, separated by spaces; "
        "`make serve` starts the 127.0.0.1 ones", default="127.0.0.1:22122"),
    var("http_port", "port development.ini serves on (127.0.0.1)", default="6543"),
    var("production_ldap_url", "LDAP server(s) for production.ini",
        default="ldaps://ldap.example.org"),
    var("production_memcached_urls", "memcached servers for production.ini",
        default="memcached1.example.org:11211 memcached2.example.org:11211 "
        "memcached3.example.org:11211"),
    var("repoze_who_memcached_requirement", "how setup.py requires repoze_who_memcached "
        "(empty: from where this copy was installed, see README)", default=""),
]
TEMPLATE_VAR_NAMES = frozenset(v.name for v in TEMPLATE_VARS)
# What PasteScript itself puts in the variables, from the command's own arguments.
PASTER_VARS = frozenset({"project", "package", "egg"})
# Earlier names of variables, refused with a pointer to the new one.
RENAMED_VARS = {
    "memcached_servers": "memcached_urls",
    "production_memcached_servers": "production_memcached_urls",
}


def unknown_variables(names: Iterable[str]) -> list[str]:
    """One message per variable this template does not take, with the likely intended one.

    paster accepts any ``name=value`` and ignores what no template reads: a misspelt
    ``ldap_ulr=`` would silently give the default. We refuse it instead.
    """
    messages = []
    for name in sorted(set(names) - TEMPLATE_VAR_NAMES - PASTER_VARS):
        if name in RENAMED_VARS:
            hint = f" (it is called {RENAMED_VARS[name]} now, like the plugin's option)"
        else:
            close = difflib.get_close_matches(name, sorted(TEMPLATE_VAR_NAMES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
        messages.append(f"unknown variable {name!r}{hint}")
    return messages


def variables_table() -> str:
    """The template's variables and defaults as an RST definition list (both READMEs).

    A list, not a table: some defaults and descriptions are too long for a readable one.
    """
    entries = []
    for v in TEMPLATE_VARS:
        if v.name == "ldap_bind_password":
            default = "random"
        elif v.default in ("", NoDefault):
            default = "empty"
        else:
            default = f"``{v.default}``"
        description = v.description.replace("`", "``")
        entries.append(f"``{v.name}`` (default: {default})\n    {description}")
    return "\n".join(entries)


def requirement_from_install(
    distribution: importlib.metadata.Distribution | None = None,
) -> str:
    """How the generated setup.py requires repoze_who_memcached: from where this copy came.

    PEP 610's ``direct_url.json`` in the installed distribution says where pip took it:
    a source tree (editable or not) or an archive (a wheel file, an sdist, a URL), or a VCS
    checkout. A project generated from a wheel nobody published must not ask an index for
    it (it would fail with "No matching distribution"): it names the same place. Without
    ``direct_url.json`` the copy came from an index, and a version requirement is right.
    """
    dist = distribution or _our_distribution()
    name = "repoze_who_memcached[paster]"
    text = dist.read_text("direct_url.json")
    if not text:
        return f"{name}>={dist.version}"
    info = json.loads(text)
    url = info["url"]
    if "vcs_info" in info:
        vcs = info["vcs_info"]
        url = f"{vcs['vcs']}+{url}@{vcs.get('commit_id') or vcs.get('requested_revision')}"
    if url.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        path = Path(unquote(urlsplit(url).path))
        if not path.exists():
            raise TemplateValueError(
                f"repoze_who_memcached_requirement: this repoze_who_memcached was installed "
                f"from {str(path)!r}, which is gone; give repoze_who_memcached_requirement="
                "'repoze_who_memcached[paster] @ file:///path/to/the.whl' (or a version)"
            )
    if info.get("subdirectory"):
        url += f"#subdirectory={info['subdirectory']}"
    return f"{name} @ {url}"


def _our_distribution() -> importlib.metadata.Distribution:
    """The installed distribution this very module was loaded from.

    Not simply the first ``repoze_who_memcached`` on sys.path: a source checkout can hold a
    stale ``*.egg-info`` (from a build) that Python finds before the editable install's
    dist-info, and only the latter's ``direct_url.json`` says where the install came from.
    """
    here = Path(__file__).resolve()
    fallback = None
    for dist in importlib.metadata.distributions(name="repoze_who_memcached"):
        text = dist.read_text("direct_url.json")
        if text:
            info = json.loads(text)
            if info.get("dir_info", {}).get("editable"):
                from urllib.parse import unquote, urlsplit

                source = Path(unquote(urlsplit(info["url"]).path)).resolve()
                if here.is_relative_to(source):
                    return dist
                continue
        with contextlib.suppress(OSError, TypeError):
            if Path(dist.locate_file("repoze_who_memcached/scaffold.py")).resolve() == here:
                if text:
                    return dist
                fallback = fallback or dist
    return fallback or importlib.metadata.distribution("repoze_who_memcached")


def _requirement(value: str, name: str) -> str:
    """The given requirement (checked for setup.py), or the one from this install."""
    value = value.strip()
    if not value:
        return requirement_from_install()
    _check_line(value, name)
    if not _OUR_REQUIREMENT.match(value):
        raise TemplateValueError(
            f"{name}: {value!r} must be a requirement of repoze_who_memcached, such as "
            "'repoze_who_memcached[paster]>=1.0' or "
            "'repoze_who_memcached[paster] @ file:///path/to/the.whl'"
        )
    return value


def prepare_vars(vars: Mapping[str, Any]) -> dict[str, Any]:
    """Check every variable and compute what the templates need; raises TemplateValueError.

    Returns the values to merge into paster's ``vars``: normalised variables, the fresh
    random cache ``secret``, the dev directory's layout as LDIF, and the escaping filters.
    """
    _project(vars)
    get = {v.name: str(vars.get(v.name, v.default)) for v in TEMPLATE_VARS}
    dev_urls = _ldap_urls(get["ldap_url"], "ldap_url")
    prod_urls = _ldap_urls(get["production_ldap_url"], "production_ldap_url")
    base = parse_dn(get["ldap_base_dn"], "ldap_base_dn")
    bind = parse_dn(get["ldap_bind_dn"], "ldap_bind_dn")
    group_text = get["ldap_group_base_dn"].strip()
    group_base = (
        parse_dn(group_text, "ldap_group_base_dn") if group_text
        else Dn((("ou", "groups", "groups"), *base.suffix().rdns))
    )
    password, generated = _password(get["ldap_bind_password"], "ldap_bind_password")
    suffix, tree = directory_layout(base, group_base, bind)
    local_ldap = [(h, p) for scheme, h, p in dev_urls if scheme == "ldap" and _is_local(h)]
    return {
        "ldap_url": _url_text(dev_urls),
        "ldap_base_dn": base.text,
        "ldap_bind_dn": bind.text,
        "ldap_bind_password": password,
        "ldap_bind_password_generated": generated,
        "ldap_group_base_dn": group_base.text,
        "memcached_urls": _memcached_urls(get["memcached_urls"], "memcached_urls"),
        "http_port": _port(get["http_port"], "http_port"),
        "production_ldap_url": _url_text(prod_urls),
        # ldaps:// is encrypted from the first byte; a plain ldap:// URL needs STARTTLS.
        "production_start_tls": "false" if all(s == "ldaps" for s, _, _ in prod_urls) else "true",
        "production_memcached_urls": _memcached_urls(
            get["production_memcached_urls"], "production_memcached_urls"
        ),
        "rwm_requirement": _requirement(get["repoze_who_memcached_requirement"],
                                        "repoze_who_memcached_requirement"),
        "variables_table": variables_table(),
        "secret": secrets.token_urlsafe(32),
        "dev_suffix": suffix.text,
        "dev_tree_ldif": tree,
        "dev_service_account_ldif": service_account_entry(bind, password),
        "dev_ldap_port": local_ldap[0][1] if local_ldap else None,
        "sample_users": dict(SAMPLE_USERS),
        "rwm_version": __version__,
        # Filters and helpers the templates call.
        "ini": ini_value,
        "slapd": slapd_quote,
        "py": py_literal,
        "ldif_entry": ldif_entry,
        "ssha": ssha,
    }


def _is_local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "[::1]") or host.startswith("127.")


def template_root() -> Path:
    """The template folder, from the installed package (editable checkout or wheel)."""
    root = importlib.resources.files(TEMPLATE_PACKAGE) / TEMPLATE_NAME
    path = Path(str(root))
    if not path.is_dir():
        raise RuntimeError(
            f"template folder {TEMPLATE_NAME!r} not found in {TEMPLATE_PACKAGE} ({path}); "
            "reinstall repoze_who_memcached (pip install -e . after changing setup.py)"
        )
    return path


def remove_copied_pycache(template_dir: Path, output_dir: Path) -> list[Path]:
    """Delete the empty ``__pycache__`` folders ``paster create`` copied from the template.

    PasteScript copies every folder but skips ``*.pyc`` files, so a ``__pycache__`` that pip
    left in the installed template becomes an empty folder in the new project. Only empty
    ones are removed: a ``__pycache__`` with files in it was made by Python, not by us.
    """
    if not any(template_dir.rglob("__pycache__")):
        return []
    removed = []
    for folder in sorted(output_dir.rglob("__pycache__"), key=lambda p: -len(p.parts)):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            removed.append(folder)
    return removed


class LdapDeploymentTemplate(Template):
    """PasteScript template: see the module docstring, and the generated README.rst."""

    summary = "repoze_who_memcached: LDAP authentication cached in memcached, ready to serve"
    vars = TEMPLATE_VARS
    template_renderer = staticmethod(paste_script_template_renderer)
    _template_dir = TEMPLATE_NAME  # informative only: template_dir() finds the real path

    def template_dir(self) -> str:
        # An absolute path: PasteScript 3.7's (package, path) form is broken (bytes.encode).
        return str(template_root())

    def check_vars(self, vars: Mapping[str, Any], cmd: Any) -> dict[str, Any]:
        """Refuse variables this template does not take, before asking for or writing any."""
        unknown = unknown_variables(vars)
        if unknown:
            raise BadCommand(
                f"{self.name}: {'; '.join(unknown)}. Nothing was written. Its variables "
                f"are: {', '.join(v.name for v in TEMPLATE_VARS)} "
                f"(paster create -t {self.name} --list-variables)"
            )
        return super().check_vars(vars, cmd)

    def pre(self, command: Any, output_dir: str, vars: MutableMapping[str, Any]) -> None:
        """Validate every variable before a single file is written."""
        try:
            vars.update(prepare_vars(vars))
        except TemplateValueError as exc:
            raise BadCommand(f"{self.name}: {exc}") from None

    def post(self, command: Any, output_dir: str, vars: Mapping[str, Any]) -> None:
        remove_copied_pycache(Path(self.template_dir()), Path(output_dir))
        if getattr(command, "verbose", 1):
            here = os.path.relpath(output_dir)
            print(f"\nNext: cd {here} && make serve   (README.rst has the details)")
            if vars.get("ldap_bind_password_generated"):
                print("The service account's password was generated: see development.ini.")


# ------------------------------------------------------------------ the Pyramid variant


PYRAMID_TEMPLATE_NAME = "repoze_who_memcached_pyramid"
# The LDAP project's ini files that configure the auth filter: the Pyramid project has the
# same settings as the app's who.* settings.
PYRAMID_INI_FILES = {
    "development.ini": "development settings (`make serve` serves them)",
    "development-who.ini": "development settings from who.ini (`make serve-who`)",
    "production.ini": "production settings",
}
_PYRAMID_INI_HEADER = """\
# {project}: {purpose}
# A Pyramid app (the {package} package): config.include("repoze_who_memcached.pyramid")
# builds repoze.who from the who.* settings of [app:main] (the options of
# repoze_who_memcached's PasteDeploy filter, each with a "who." prefix; README.rst).
"""


def pyramid_ini(text: str, project: str, package: str, purpose: str) -> str:
    """The LDAP project's PasteDeploy file, rewritten for the Pyramid project.

    ``[pipeline:main]`` (auth filter, then app) goes; the app section becomes
    ``[app:main]`` and takes every option of ``[filter:auth]`` (comments kept) with a
    ``who.`` prefix (``get x = var`` lines too); the leading comment is replaced. One
    source of truth: the Pyramid files cannot drift from the tested LDAP ones.
    """
    lines = text.splitlines()
    first_section = next(i for i, line in enumerate(lines) if line.startswith("["))
    out = _PYRAMID_INI_HEADER.format(project=project, package=package,
                                     purpose=purpose).splitlines()
    out.append("")
    section = ""
    for line in lines[first_section:]:
        if line.startswith("["):
            section = line.strip()
            if section == "[pipeline:main]":
                continue
            if section == "[filter:auth]":
                continue  # its options join [app:main], which comes just before it
            out.append("[app:main]" if section == "[app:app]" else line)
            continue
        if section == "[pipeline:main]":
            continue
        if section == "[filter:auth]":
            stripped = line.strip()
            if stripped.startswith("use ="):
                continue
            if stripped and not stripped.startswith(("#", ";")) and not line[0].isspace():
                line = re.sub(r"^(get\s+)?", lambda m: (m.group(1) or "") + "who.", line, count=1)
        out.append(line)
    result = "\n".join(out) + "\n"
    if "[filter:auth]" in text and "who." not in result:
        raise RuntimeError("pyramid_ini: no [filter:auth] options were carried over")
    return result


_PYRAMID_README_INTRO = """\
A small Pyramid app (the ``{package}`` package) whose users log in with HTTP basic auth
checked against LDAP, with each answer (and the user's name, mail and groups) cached in
memcached, sealed and keyed by a secret. Made by
``paster create -t repoze_who_memcached_pyramid``.

The app calls ``config.include("repoze_who_memcached.pyramid")``: that builds repoze.who
from the ``who.*`` settings of ``[app:main]`` (the options of repoze_who_memcached's
PasteDeploy filter, each with a ``who.`` prefix) and sets Pyramid's security policy. Its
ACL gives every logged-in user ``view`` (``/``) and the LDAP group ``admins`` ``admin``
(``/admin``: alice may, bob gets 403). Anonymous requests get the basic-auth challenge.

"""


def pyramid_readme(text: str, package: str) -> str:
    """The LDAP project's README with the Pyramid project's introduction."""
    start = text.index("\n\n") + 2  # after the title
    end = text.index("What is here\n")
    text = text[:start] + _PYRAMID_README_INTRO.format(package=package) + text[end:]
    for old, new in (
        ("the ``auth`` filter (our LDAP authenticator and\n    metadata provider, wrapped by "
         "the cache) in front of the app, on waitress.",
         "the app's ``who.*`` settings (our LDAP\n    authenticator and metadata provider, "
         "wrapped by the cache), on waitress."),
        ("``config_file = %(here)s/who.ini``", "``who.config_file = %(here)s/who.ini``"),
        ("The app: it shows who logged in.", "The Pyramid app: it shows who logged in."),
    ):
        if old not in text:
            raise RuntimeError(f"pyramid_readme: {old[:40]!r}... not in the LDAP README")
        text = text.replace(old, new)
    return text


def pyramid_template_root() -> Path:
    """The Pyramid overlay folder (its files replace the LDAP project's)."""
    path = Path(str(importlib.resources.files(TEMPLATE_PACKAGE) / PYRAMID_TEMPLATE_NAME))
    if not path.is_dir():
        raise RuntimeError(f"template folder {PYRAMID_TEMPLATE_NAME!r} not found ({path}); "
                           "reinstall repoze_who_memcached")
    return path


class PyramidDeploymentTemplate(LdapDeploymentTemplate):
    """``paster create -t repoze_who_memcached_pyramid``: the LDAP project, as a Pyramid app.

    The same variables, dev directory, ``devstack.py`` and ``make serve``; the app package
    is a Pyramid app (``config.include("repoze_who_memcached.pyramid")``) and the ini
    files carry the auth options as its ``who.*`` settings (:func:`pyramid_ini`).
    """

    summary = ("repoze_who_memcached: a Pyramid app with LDAP logins cached in memcached, "
               "ready to serve")

    def pre(self, command: Any, output_dir: str, vars: MutableMapping[str, Any]) -> None:
        super().pre(command, output_dir, vars)
        requirement = str(vars["rwm_requirement"])
        ours = "repoze_who_memcached[paster]"
        if requirement.startswith(ours):  # ours, not one the user gave: add the extra
            vars["rwm_requirement"] = "repoze_who_memcached[paster,pyramid]" + requirement[
                len(ours):]

    def write_files(self, command: Any, output_dir: str, vars: Mapping[str, Any]) -> None:
        super().write_files(command, output_dir, vars)  # the LDAP project
        from paste.script import copydir

        copydir.copy_dir(str(pyramid_template_root()), output_dir, vars,
                         verbosity=command.verbose, simulate=command.options.simulate,
                         interactive=False, overwrite=True, indent=1, svn_add=False,
                         template_renderer=self.template_renderer)
        if command.options.simulate:
            return
        for name, purpose in PYRAMID_INI_FILES.items():
            path = Path(output_dir) / name
            path.write_text(pyramid_ini(path.read_text(encoding="utf-8"), vars["project"],
                                        vars["package"], purpose), encoding="utf-8")
        readme = Path(output_dir) / "README.rst"
        readme.write_text(pyramid_readme(readme.read_text(encoding="utf-8"), vars["package"]),
                          encoding="utf-8")

    def post(self, command: Any, output_dir: str, vars: Mapping[str, Any]) -> None:
        remove_copied_pycache(pyramid_template_root(), Path(output_dir))
        super().post(command, output_dir, vars)

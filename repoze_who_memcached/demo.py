"""The demo app of ``make serve``: who you are, your metadata, and what the cache did.

``egg:repoze_who_memcached#demo`` (``paste.app_factory``). Anonymous requests get a 401 so
the basic-auth challenger asks for credentials. ``?format=json`` (or ``Accept:
application/json``) returns the same facts as JSON, which is what the tests read.
"""

from __future__ import annotations

import html
import json
from typing import Any

from .plugin import ENVIRON_KEY, CachingPlugin

HIDDEN_ITEMS = frozenset({"password", "identifier", "authenticator"})


def make_app(global_conf: dict[str, Any] | None = None, **local_conf: Any):
    title = local_conf.pop("title", "repoze_who_memcached demo")
    if local_conf:
        raise ValueError(f"demo app: unknown option(s) {sorted(local_conf)}")
    return DemoApp(title)


class DemoApp:
    def __init__(self, title: str) -> None:
        self.title = title

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        identity = environ.get("repoze.who.identity")
        if identity is None:
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"Log in, please.\n"]
        facts = self.facts(environ, identity)
        wants_json = "format=json" in environ.get("QUERY_STRING", "") or (
            "application/json" in environ.get("HTTP_ACCEPT", "")
        )
        if wants_json:
            body = json.dumps(facts, indent=2, default=_jsonable).encode()
            content_type = "application/json"
        else:
            body = self.render(facts).encode()
            content_type = "text/html; charset=utf-8"
        start_response("200 OK", [("Content-Type", content_type),
                                  ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]

    @staticmethod
    def facts(environ: dict, identity: dict) -> dict[str, Any]:
        registry = environ.get("repoze.who.plugins") or {}
        plugins = {id(p): p for p in registry.values() if isinstance(p, CachingPlugin)}
        caches = {plugin.name: plugin.counters.snapshot() for plugin in plugins.values()}
        return {
            "userid": identity.get("repoze.who.userid"),
            "remote_user": environ.get("REMOTE_USER"),
            "identity": {k: v for k, v in identity.items()
                         if k not in HIDDEN_ITEMS and isinstance(k, str)},
            "cache": environ.get(ENVIRON_KEY, {}),
            "counters": caches,
        }

    def render(self, facts: dict[str, Any]) -> str:
        def rows(mapping: dict[str, Any]) -> str:
            return "".join(
                f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_show(v))}</td></tr>"
                for k, v in sorted(mapping.items())
            )

        outcome = ", ".join(f"{name}: {m}" for name, m in facts["cache"].items()) or "none"
        counters = "".join(
            f"<h3>{html.escape(name)}</h3><table>{rows(c)}</table>"
            for name, c in facts["counters"].items()
        )
        return (
            f"<!doctype html><meta charset=utf-8><title>{html.escape(self.title)}</title>"
            f"<h1>Hello, {html.escape(str(facts['userid']))}</h1>"
            f"<p>This request's cache outcome: <b>{html.escape(outcome)}</b></p>"
            f"<h2>Your identity</h2><table>{rows(facts['identity'])}</table>"
            f"<h2>Cache counters</h2>{counters}"
        )


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_show(v) for v in value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)

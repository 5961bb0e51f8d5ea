"""Scale: cache-hit latency with 1, 10**4 and 10**6 cached identities, on 1 and 3 memcached
servers, for both clients.

Every (fill, topology) pair has servers of its own, all alive at once, so all
configurations run interleaved in the same rounds and every ratio is measured side by side.

How memcached is filled, quickly: the identities whose requests are timed (``sample`` of
them, spread over the fill) are made by the plugin's own store path (``CachingPlugin.
authenticate`` on a miss, into an in-memory backend), then written to every server of the
topology, so each client finds them wherever its routing looks. The other cached identities
are filler with the real shapes: per identity an entry (43-character key, a value as long
as a real sealed entry) and a user generation token (43-character key, 16 bytes), spread
evenly over the servers with pipelined ``set_many``. memcached cannot tell them apart from
real ones, and nothing reads them.

Also measured: what choosing a server costs each client with 1 and 3 servers (python-
memcached: CRC-32 of the route modulo the server count, per key; our pymemcache backend: a
ring lookup with bisect, per request; pymemcache's ``HashClient``, which dogpile.cache uses:
rendezvous hashing over every server, per key).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymemcache.client.base import Client as PymemcacheClient
from repoze.who.interfaces import IAuthenticator
from zope.interface import implementer

from repoze_who_memcached import CachingPlugin
from repoze_who_memcached.backends import BackendSettings, ServerAddress
from repoze_who_memcached.plugin import ENVIRON_KEY

from . import harness, servers, stacks

CLIENTS = ("python-memcached", "pymemcache")
TOPOLOGIES = (1, 3)
CHUNK = 5000


@dataclass
class Settings:
    fills: tuple[int, ...]
    sample: int
    rounds: int
    batch_seconds: float


def login_of(index: int) -> str:
    return f"s{index:07d}"


def password_of(index: int) -> str:
    return f"scale-pw-{index}"


@implementer(IAuthenticator)
class DirectoryLike:
    """Answers as our LDAP authenticator would (userid and ``ldap.dn``), without LDAP."""

    def authenticate(self, environ: dict, identity: dict) -> Any:
        login = identity["login"]
        identity["ldap.dn"] = f"uid={login},{servers.PEOPLE_DN}"
        return login


class DictBackend:
    """An in-memory memcached for the plugin's store path: what it writes, we keep."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}
        self.settings = BackendSettings(servers=(ServerAddress.parse("127.0.0.1:11211"),))

    def get_multi(self, keys: Iterable[str], *args: Any, **kwargs: Any) -> dict[str, bytes]:
        return {k: self.items[k] for k in keys if k in self.items}

    def set(self, key: str, value: bytes, *args: Any, **kwargs: Any) -> bool:
        self.items[key] = value
        return True

    def add(self, key: str, value: bytes, *args: Any, **kwargs: Any) -> bool:
        if key in self.items:
            return False
        self.items[key] = value
        return True

    def delete(self, key: str, *args: Any, **kwargs: Any) -> bool:
        return self.items.pop(key, None) is not None

    def touch(self, key: str, *args: Any, **kwargs: Any) -> bool:
        return key in self.items

    def incr(self, key: str, delta: int, *args: Any, **kwargs: Any) -> int | None:
        if key not in self.items:
            return None
        value = max(0, int(self.items[key]) + delta)
        self.items[key] = str(value).encode()
        return value

    def set_everywhere(self, key: str, value: bytes) -> list[str]:
        self.items[key] = value
        return []


def sample_indexes(fill: int, sample: int) -> list[int]:
    count = min(fill, sample)
    return sorted({i * fill // count for i in range(count)})


def real_entries(indexes: list[int]) -> dict[str, bytes]:
    """The memcached items our plugin stores for these identities, made by its store path."""
    backend = DictBackend()
    plugin = CachingPlugin(secret=stacks.SECRET, backend=backend,
                           authenticator=DirectoryLike(), ttl=stacks.TTL)
    for index in indexes:
        identity = {"login": login_of(index), "password": password_of(index)}
        if plugin.authenticate({}, identity) != login_of(index):
            raise RuntimeError("the store path did not authenticate")
    return backend.items


def _random_keys(count: int) -> list[str]:
    raw = os.urandom(32 * count)
    return [base64.urlsafe_b64encode(raw[i * 32:(i + 1) * 32])[:43].decode("ascii")
            for i in range(count)]


def fill(topologies: dict[int, list[Any]], real: dict[str, bytes], filler_identities: int,
         entry_size: int, log: Callable[[str], None]) -> None:
    """Write ``real`` to every server, and filler for ``filler_identities`` spread evenly."""
    clients = {n: [PymemcacheClient((s.host, s.port), no_delay=True, timeout=30,
                                    default_noreply=False) for s in group]
               for n, group in topologies.items()}
    try:
        for group in clients.values():
            for client in group:
                failed = client.set_many(real, expire=0)
                if failed:
                    raise RuntimeError(f"memcached refused {len(failed)} sample items")
        entry_value = os.urandom(entry_size)
        token_value = base64.urlsafe_b64encode(os.urandom(12))
        done = 0
        while done < filler_identities:
            count = min(CHUNK, filler_identities - done)
            keys = _random_keys(2 * count)
            items = {k: (entry_value if i % 2 == 0 else token_value) for i, k in enumerate(keys)}
            for group in clients.values():
                shares: list[dict[str, bytes]] = [{} for _ in group]
                for i, (k, v) in enumerate(items.items()):
                    shares[(i // 2) % len(group)][k] = v  # an identity's two items together
                for client, share in zip(group, shares, strict=True):
                    client.set_many(share, expire=0, noreply=True)
            done += count
            if done % 200_000 < CHUNK:
                log(f"scale: filled {done}/{filler_identities}")
        for group in clients.values():
            for client in group:
                client.version()  # a round trip: every noreply set before it is processed
    finally:
        for group in clients.values():
            for client in group:
                client.close()


def _check_hits(middleware: Any, environs: list[dict], logins: list[str], what: str) -> None:
    for environ, login in zip(environs, logins, strict=True):
        env = stacks.call(middleware, environ)
        outcome = env.get(ENVIRON_KEY, {}).get("cache", {}).get("authenticate")
        if outcome != "hit" or env.get("REMOTE_USER") != login:
            raise RuntimeError(f"scale {what}: {login}: {outcome!r} as "
                               f"{env.get('REMOTE_USER')!r}, expected a hit")


def _selection_cases(topologies: dict[int, list[Any]]) -> dict[str, Callable[[], Any]]:
    """What picking a server costs, per client, with 1 and 3 servers (private APIs: cases
    whose internals have changed are skipped)."""
    cases: dict[str, Callable[[], Any]] = {}
    route = "jqEoJzXClkbgidUHwdqdjPdct01xBfqmZAMHqGvv7To"
    keys = [route, "3vxwy4UoINax0QT14UDQ5zNnf94JFk9aT8pJaG8x0aA",
            "L7y_dggZb0kxMvcqp6fwpS_m8UuU4Ljp9uDucTY4Arg"]
    for n, group in topologies.items():
        urls = [s.url for s in group]
        pmc = stacks.cache_plugin(stacks.our_cached(stacks.hello_app, urls, "python-memcached"))
        pmc_server_for = getattr(pmc.backend, "_server_for", None)
        if pmc_server_for is not None:  # ours: python-memcached's rule, our dead marks
            cases[f"our python-memcached routing, per request [{n} server"
                  f"{'s' if n > 1 else ''}]"] = (lambda f=pmc_server_for: f(route))
        pym = stacks.cache_plugin(stacks.our_cached(stacks.hello_app, urls, "pymemcache"))
        server_for = getattr(pym.backend, "_server_for", None)
        if server_for is not None:
            cases[f"our pymemcache ring, per request [{n} server{'s' if n > 1 else ''}]"] = (
                lambda server_for=server_for: server_for(route))
        from pymemcache.client.hash import HashClient

        hash_client = HashClient([(s.host, s.port) for s in group])
        if hasattr(hash_client, "_get_client"):
            cases[f"pymemcache HashClient (dogpile), 3 keys [{n} server"
                  f"{'s' if n > 1 else ''}]"] = (
                lambda h=hash_client: [h._get_client(k) for k in keys])
    return cases


def run(workdir: Path, cpu: int, settings: Settings, log: Callable[[str], None]) -> dict:
    import contextlib

    results: dict[str, Any] = {"settings": {**vars(settings), "fills": list(settings.fills)}}
    with contextlib.ExitStack() as stack:
        started: list[Any] = []
        servers_by: dict[int, dict[int, list[Any]]] = {}
        for f in settings.fills:
            big = f >= 100_000
            servers_by[f] = {}
            for n in TOPOLOGIES:
                memory = (1024 if n == 1 else 512) if big else 64
                group = [stack.enter_context(servers.PinnedMemcached(
                    cpus=str(cpu), memory_mb=memory)) for _ in range(n)]
                servers_by[f][n] = group
                started.extend(group)
        stack.callback(servers.stop_all, started)  # LIFO: runs first, stops all at once

        cases: dict[str, Callable[[], Any]] = {}
        fills_info = {}
        for f in settings.fills:
            indexes = sample_indexes(f, settings.sample)
            real = real_entries(indexes)
            entry_size = max(len(v) for v in real.values())
            log(f"scale: filling {f} identities ({len(indexes)} timed) on 1 and 3 servers")
            fill(servers_by[f], real, f - len(indexes), entry_size, log)
            logins = [login_of(i) for i in indexes]
            environs = [stacks.basic_environ(login_of(i), password_of(i)) for i in indexes]
            for n, group in servers_by[f].items():
                urls = [s.url for s in group]
                for client in CLIENTS:
                    # The plugin real_entries stored with: entries are bound to it (its
                    # fingerprint), as they are to the directory in production.
                    mw = stacks.our_cached(stacks.hello_app, urls, client,
                                           authenticator="benchmarks.scale:DirectoryLike")
                    what = f"{client}, {n} server(s), {f} identities"
                    _check_hits(mw, environs, logins, what)
                    cases[f"{client}|{n}|{f}"] = stacks.cycling_case(mw, environs)
            stats = {n: [s.stats() for s in group] for n, group in servers_by[f].items()}
            fills_info[f] = {
                "timed_identities": len(indexes),
                "entry_bytes": entry_size,
                "items_per_server": {n: [int(s.get("curr_items", 0)) for s in st]
                                     for n, st in stats.items()},
                "evictions": sum(int(s.get("evictions", 0)) for st in stats.values()
                                 for s in st),
            }
        smallest = settings.fills[0]
        for n, group in servers_by[smallest].items():
            urls = [s.url for s in group]
            environ = stacks.basic_environ(login_of(0), password_of(0))
            for client in CLIENTS:
                region = stacks.dogpile_region(client, urls)
                mw = stacks.stock_middleware(stacks.hello_app, stacks.DogpileCachedAuthenticator(
                    stacks.AcceptAll(), region, prefix=f"scale-{client}:"))
                stacks.call(mw, environ)
                cases[f"dogpile[{client}]|{n}|{smallest}"] = stacks.wsgi_case(mw, environ)

        log(f"scale: {len(cases)} configurations x {settings.rounds} rounds")
        series = harness.interleaved(cases, rounds=settings.rounds,
                                     batch_seconds=settings.batch_seconds)
        log("scale: server selection")
        selection_cases = _selection_cases(servers_by[smallest])
        selection = harness.interleaved(selection_cases, rounds=settings.rounds,
                                        batch_seconds=settings.batch_seconds / 2)
        log("scale: stopping the servers")

    largest = settings.fills[-1]
    ratios = {}
    for client in CLIENTS:
        for n in TOPOLOGIES:
            r = harness.ratio(series, f"{client}|{n}|{largest}", f"{client}|{n}|{smallest}")
            ratios[f"{client}, {n} server(s): {largest} / {smallest} identities"] = r.median
        for f in settings.fills:
            r = harness.ratio(series, f"{client}|3|{f}", f"{client}|1|{f}")
            ratios[f"{client}, {f} identities: 3 / 1 servers"] = r.median
    for client in CLIENTS:
        r = harness.ratio(series, f"dogpile[{client}]|3|{smallest}",
                          f"dogpile[{client}]|1|{smallest}")
        ratios[f"dogpile[{client}], {smallest} identities: 3 / 1 servers"] = r.median
    results.update({
        "cases": {name: s.as_dict() for name, s in series.items()},
        "ratios": ratios,
        "fills": fills_info,
        "selection": {name: s.as_dict() for name, s in selection.items()},
    })
    return results

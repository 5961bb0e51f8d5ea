"""Per-request latency through repoze.who, in-process, and the three targets.

Each case calls a WSGI middleware directly with a prepared environ (Basic credentials for
alice) and consumes the response. Cases, measured interleaved in the same rounds:

* ``stock_floor``     stock repoze.who: basic auth + an authenticator that accepts everyone
* ``our_floor``       the same through our filter (interfaces verified once, at load time)
* ``ldap_uncached``   our filter, our LDAP authenticator, no cache (search + bind per request)
* ``ours_hit[C]``     our filter, LDAP cached by our plugin, a cache hit, client C
* ``ours_local_hit[C]`` the same with the near cache on (``local_ttl = 60``): answered from
                      process memory (the invalidation epoch is read once a second, and an
                      entry is refetched from memcached when its minute is up)
* ``dogpile_hit[C]``  stock repoze.who, the LDAP authenticator memoized with dogpile.cache on
                      memcached through client C (key: sha256 of login:password)
* ``raw_get``         one memcached ``get`` of our entry over a raw socket (the network floor)

Then a breakdown of our hit (same rounds again, per client): the hit with the network taken
out (the plugin's ``get_multi`` answered from memory), the plugin's real ``get_multi`` alone,
and a raw-socket get of the same keys; and a cProfile of our hit path.
"""

from __future__ import annotations

import cProfile
import pstats
import socket
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from repoze_who_memcached.plugin import ENVIRON_KEY

from . import harness, stacks

CLIENTS = ("python-memcached", "pymemcache")
LOGIN, PASSWORD = "alice", "wonderland"

LOCAL_TTL = "60"
TARGETS = (
    # (numerator, denominator, target, what it says)
    ("ours_hit[{c}]", "stock_floor", 1.0,
     "our memcached hit through our filter / stock repoze.who's floor"),
    ("ours_hit[{c}]", "our_floor", 1.5, "our memcached hit / our own floor"),
    ("ours_hit[{c}]", "dogpile_hit[{c}]", 1.0,
     "ours (sealed, HMAC keys) / dogpile.cache memoization"),
    ("ours_local_hit[{c}]", "stock_floor", 1.0,
     "our near-cache hit (local_ttl) through our filter / stock repoze.who's floor"),
    ("ours_local_hit[{c}]", "our_floor", 1.5, "our near-cache hit / our own floor"),
    ("ours_local_hit[{c}]", "dogpile_hit[{c}]", 1.0,
     "our near-cache hit / dogpile.cache memoization"),
)


@dataclass
class Settings:
    rounds: int
    batch_seconds: float
    profile_calls: int


class RawMemcached:
    """A memcached text-protocol ``get`` over a plain blocking socket (TCP_NODELAY)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def getter(self, keys: list[str]) -> Callable[[], bytes]:
        command = ("get " + " ".join(keys) + "\r\n").encode("ascii")
        sock = self.sock

        def get() -> bytes:
            sock.sendall(command)
            data = sock.recv(65536)
            while not data.endswith(b"END\r\n"):
                data += sock.recv(65536)
            return data

        return get

    def close(self) -> None:
        self.sock.close()


class RecordingBackend:
    """Passes every call to the real backend and remembers the ``get_multi`` calls."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[tuple[tuple, dict, dict]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def get_multi(self, *args: Any, **kwargs: Any) -> dict:
        found = self.real.get_multi(*args, **kwargs)
        self.calls.append((args, kwargs, dict(found)))
        return found


class ReplayBackend:
    """Answers ``get_multi`` from memory: the plugin's hit path with no network."""

    def __init__(self, found: dict) -> None:
        self.found = dict(found)

    def get_multi(self, keys: Any, *args: Any, **kwargs: Any) -> dict:
        found = self.found
        return {k: found[k] for k in keys if k in found}

    def set(self, *args: Any, **kwargs: Any) -> bool:
        return False

    add = delete = set


def record_hit(middleware: Any, environ: dict) -> tuple[tuple, dict, dict]:
    """One request through ``middleware`` (a hit), returning its plugin's get_multi call."""
    plugin = stacks.cache_plugin(middleware)
    real = plugin.backend
    recorder = plugin.backend = RecordingBackend(real)
    try:
        env = stacks.call(middleware, environ)
    finally:
        plugin.backend = real
    _expect_hit(env, "recording")
    if len(recorder.calls) != 1:
        raise RuntimeError(f"expected one get_multi per hit, saw {len(recorder.calls)}")
    return recorder.calls[0]


def _expect_user(env: dict, case: str, user: str = LOGIN) -> None:
    if env.get("REMOTE_USER") != user:
        raise RuntimeError(f"{case}: expected REMOTE_USER={user!r}, got {env.get('REMOTE_USER')!r}")


def _expect_hit(env: dict, case: str, expected: str = "hit") -> None:
    _expect_user(env, case)
    outcome = env.get(ENVIRON_KEY, {}).get("cache", {}).get("authenticate")
    if outcome != expected:
        raise RuntimeError(f"{case}: expected {expected!r}, got {outcome!r}")


def build_cases(lab: Any) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """Every latency case, each checked once (right user; hits are hits)."""
    app = stacks.hello_app
    environ = stacks.basic_environ(LOGIN, PASSWORD)
    mc_urls = [lab.memcached.url]
    cases: dict[str, Callable[[], Any]] = {}
    extra: dict[str, Any] = {"ours": {}, "ours_local": {}, "dogpile_ldap": {},
                             "environ": environ}

    stock_floor = stacks.stock_middleware(app, stacks.AcceptAll())
    our_floor = stacks.our_floor(app)
    uncached = stacks.our_ldap_uncached(app, lab.slapd.url)
    for name, mw in (("stock_floor", stock_floor), ("our_floor", our_floor),
                     ("ldap_uncached", uncached)):
        _expect_user(stacks.call(mw, environ), name)
        cases[name] = stacks.wsgi_case(mw, environ)

    for client in CLIENTS:
        name = f"ours_hit[{client}]"
        mw = stacks.our_cached(app, mc_urls, client, slapd_url=lab.slapd.url,
                               key_prefix=f"lat-{client}:")
        stacks.call(mw, environ)  # the miss that fills the cache
        _expect_hit(stacks.call(mw, environ), name)
        cases[name] = stacks.wsgi_case(mw, environ)
        extra["ours"][client] = mw

    for client in CLIENTS:
        name = f"ours_local_hit[{client}]"
        mw = stacks.our_cached(app, mc_urls, client, slapd_url=lab.slapd.url,
                               key_prefix=f"lat-{client}:", local_ttl=LOCAL_TTL)
        _expect_hit(stacks.call(mw, environ), name)  # from memcached, kept in memory
        _expect_hit(stacks.call(mw, environ), name, "local_hit")
        cases[name] = stacks.wsgi_case(mw, environ)
        extra["ours_local"][client] = mw

    # Issue 13's features on the hit path (pymemcache): the shield and a listed previous
    # secret cost a hit nothing but their bookkeeping (both act on misses only).
    for name, options in (("ours_hit_shield[pymemcache]", {"max_failures": "5"}),
                          ("ours_hit_rotating[pymemcache]",
                           {"previous_secrets": "an-old-secret-being-rotated-out-0123"})):
        mw = stacks.our_cached(app, mc_urls, "pymemcache", slapd_url=lab.slapd.url,
                               key_prefix="lat-pymemcache:", **options)
        _expect_hit(stacks.call(mw, environ), name)  # filled by ours_hit[pymemcache]
        cases[name] = stacks.wsgi_case(mw, environ)

    for client in CLIENTS:
        name = f"dogpile_hit[{client}]"
        ldap = stacks.make_ldap(lab.slapd.url)
        region = stacks.dogpile_region(client, mc_urls)
        region.invalidate(hard=True)
        mw = stacks.stock_middleware(
            app, stacks.DogpileCachedAuthenticator(ldap, region, prefix=f"auth-{client}:"))
        _expect_user(stacks.call(mw, environ), name)  # the miss
        before = ldap.counters()["requests"]
        _expect_user(stacks.call(mw, environ), name)
        if ldap.counters()["requests"] != before:
            raise RuntimeError(f"{name}: the second request was not a dogpile cache hit")
        cases[name] = stacks.wsgi_case(mw, environ)
        extra["dogpile_ldap"][client] = ldap

    # The raw floor: a get of our real entry (same key and value size).
    _args, _kwargs, found = record_hit(extra["ours"]["pymemcache"], environ)
    raw = RawMemcached(lab.memcached.host, lab.memcached.port)
    entry_key = next(k for k, v in found.items() if len(v) > 64)
    cases["raw_get"] = raw.getter([entry_key])
    extra["raw"] = raw
    return cases, extra


def build_breakdown(lab: Any, ours: dict[str, Any], environ: dict) -> dict[str, Callable]:
    """Our hit, split: no-network hit, the backend call alone, raw get of the same keys."""
    cases: dict[str, Callable[[], Any]] = {"our_floor": stacks.wsgi_case(
        stacks.our_floor(stacks.hello_app), environ)}
    raw = RawMemcached(lab.memcached.host, lab.memcached.port)
    for client in CLIENTS:
        mw = ours[client]
        args, kwargs, found = record_hit(mw, environ)
        real = stacks.cache_plugin(mw).backend
        keys = list(args[0] if args else kwargs["keys"])
        cases[f"ours_hit[{client}]"] = stacks.wsgi_case(mw, environ)

        # The same filter and plugin options, its get_multi answered from memory.
        offline = stacks.our_cached(stacks.hello_app, [lab.memcached.url], client,
                                    slapd_url=lab.slapd.url, key_prefix=f"lat-{client}:")
        stacks.cache_plugin(offline).backend = ReplayBackend(found)
        _expect_hit(stacks.call(offline, environ), f"no-network hit [{client}]")
        cases[f"hit_without_network[{client}]"] = stacks.wsgi_case(offline, environ)

        def backend_call(real=real, args=args, kwargs=kwargs) -> Any:
            return real.get_multi(*args, **kwargs)

        if len(backend_call()) != len(found):
            raise RuntimeError(f"replayed get_multi [{client}] did not find every key")
        cases[f"backend_get_multi[{client}]"] = backend_call
        cases[f"raw_get_multi[{client}]"] = raw.getter(keys)
        if client == CLIENTS[-1]:
            # What a blocking round trip costs the Python code that runs after it (cold
            # caches after the core idled): a raw get, then the no-network hit.
            raw_then_offline = (raw.getter(keys), cases[f"hit_without_network[{client}]"])

            def after_round_trip(parts: tuple = raw_then_offline) -> None:
                parts[0]()
                parts[1]()

            cases["raw_get_multi, then hit_without_network"] = after_round_trip
    return cases


def build_components(lab: Any, environ: dict, found: dict, client: str
                     ) -> tuple[dict[str, Callable[[], Any]], list[str]]:
    """The pieces of our hit path, each alone (no network). These reach into the plugin's
    private methods, so a piece whose internals have changed is skipped, and named."""
    mw = stacks.our_cached(stacks.hello_app, [lab.memcached.url], client,
                           slapd_url=lab.slapd.url, key_prefix=f"lat-{client}:")
    plugin = stacks.cache_plugin(mw)
    plugin.backend = ReplayBackend(found)
    identity = {"login": LOGIN, "password": PASSWORD}
    pieces: dict[str, Callable[[], Any]] = {
        "plugin.authenticate, whole (no network)":
            lambda: plugin.authenticate({}, dict(identity)),
    }
    skipped: list[str] = []
    try:
        method = "authenticate"
        items = plugin._authenticate_items(identity)
        head = plugin._entry_heads[method]
        entry_key = plugin.region.keys.entry_key(method, items, head)
        user_key = plugin.region.keys.user_generation_key("login", LOGIN)
        namespace_key = plugin.region.keys.namespace_generation_key()
        raw = found[entry_key]
        generations = [found[namespace_key], found[user_key]]
        record = plugin.region._open(entry_key, raw, generations)
        if record is None:
            raise LookupError("the recorded entry did not open")
        pieces.update({
            "_authenticate_items (which identity items key the entry)":
                lambda: plugin._authenticate_items(identity),
            "keys.entry_key (remembered: marshal + keyed BLAKE2s + a dict lookup)":
                lambda: plugin.region.keys.entry_key(method, items, head),
            "keys.entry_key, made afresh (encode + HMAC-SHA256 + base64)":
                lambda: plugin.region.keys._entry_key(method, items, head, ""),
            "keys.user_generation_key (remembered by login)":
                lambda: plugin.region.keys.user_generation_key("login", LOGIN),
            "_open (sealing.open + generation checks)":
                lambda: plugin.region._open(entry_key, raw, generations),
            "sealing.open (remembered by the sealed bytes)":
                lambda: plugin.region.sealer.open(entry_key, raw),
            "sealing.open, afresh (AES-GCM decrypt + JSON decode)":
                lambda: plugin.region.sealer._open(entry_key, raw),
            "identity.update (restoring the values)":
                lambda: dict(identity).update(record["v"]),
            "counters.incr": lambda: plugin.counters.incr("hits"),
            "_record (environ bookkeeping)": lambda: plugin._record({}, method, "hit"),
            "time.time (the expiry check)": __import__("time").time,
        })
    except (AttributeError, KeyError, LookupError, TypeError) as exc:
        skipped.append(f"components: {type(exc).__name__}: {exc}")
    for name, piece in list(pieces.items()):
        try:
            piece()
        except Exception as exc:  # a private API changed: skip it, say so
            skipped.append(f"{name}: {type(exc).__name__}: {exc}")
            del pieces[name]
    return pieces, skipped


# ------------------------------------------------------------------ profiling

_AREAS = (
    ("our plugin.py", ("repoze_who_memcached/plugin.py",)),
    ("our keys.py", ("repoze_who_memcached/keys.py",)),
    ("our sealing.py", ("repoze_who_memcached/sealing.py",)),
    ("our backends.py", ("repoze_who_memcached/backends.py",)),
    ("our counters.py", ("repoze_who_memcached/counters.py",)),
    ("our pipeline.py", ("repoze_who_memcached/pipeline.py",)),
    ("repoze.who", ("/repoze/who/",)),
    ("zope.interface", ("/zope/interface/",)),
    ("pymemcache", ("/pymemcache/",)),
    ("python-memcached", ("/memcache.py",)),
    ("json", ("/json/",)),
    ("hmac / base64", ("/hmac.py", "/base64.py")),
    ("threading", ("/threading.py",)),
    ("benchmark harness", ("/benchmarks/",)),
)
_BUILTIN_AREAS = (
    ("socket I/O (send/recv/poll)", ("sendall", "recv", "send", "poll", "settimeout", "select")),
    ("AES-GCM (cryptography)", ("AESGCM", "decrypt", "encrypt")),
    ("hmac / base64", ("hmac", "HMAC", "digest", "b64", "binascii", "openssl")),
    ("json", ("scanner", "json")),
)


def _area(filename: str, function: str) -> str:
    if filename == "~":
        for area, needles in _BUILTIN_AREAS:
            if any(n in function for n in needles):
                return area
        return "other built-ins"
    for area, needles in _AREAS:
        if any(n in filename for n in needles):
            return area
    return "other Python"


def profile_hit(middleware: Any, environ: dict, calls: int) -> dict[str, Any]:
    """cProfile ``calls`` hits; time per request by area, and our functions' costs."""
    case = stacks.wsgi_case(middleware, environ)
    for _ in range(200):
        case()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        case()
    profiler.disable()
    stats = pstats.Stats(profiler)
    areas: dict[str, float] = {}
    ours = []
    total = 0.0
    for (filename, line, function), (_cc, ncalls, tottime, cumtime, _callers) in (
        stats.stats.items()  # type: ignore[attr-defined]
    ):
        area = _area(filename, function)
        areas[area] = areas.get(area, 0.0) + tottime
        total += tottime
        if "repoze_who_memcached/" in filename:
            short = filename.split("repoze_who_memcached/")[-1]
            ours.append({
                "function": f"{short}:{line}({function})",
                "calls_per_request": ncalls / calls,
                "self_us": tottime / calls * 1e6,
                "cumulative_us": cumtime / calls * 1e6,
            })
    ours.sort(key=lambda f: -f["cumulative_us"])
    return {
        "calls": calls,
        "total_us": total / calls * 1e6,
        "areas_us": dict(sorted(((a, t / calls * 1e6) for a, t in areas.items()),
                                key=lambda item: -item[1])),
        "our_functions": ours[:25],
    }


# ------------------------------------------------------------------ the section


def run(lab: Any, settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    cases, extra = build_cases(lab)
    log(f"latency: {len(cases)} cases x {settings.rounds} rounds")
    timed_caches = {f"{kind}[{c}]": m for kind in ("ours", "ours_local")
                    for c, m in extra[kind].items()}
    counters_before = {n: stacks.cache_plugin(m).counters.snapshot()
                       for n, m in timed_caches.items()}
    series = harness.interleaved(cases, rounds=settings.rounds,
                                 batch_seconds=settings.batch_seconds)
    after = {n: stacks.cache_plugin(m).counters.snapshot() for n, m in timed_caches.items()}
    misses = {n: after[n]["misses"] - counters_before[n]["misses"] for n in timed_caches}
    if any(misses.values()):
        raise RuntimeError(f"latency: cache misses while timing hits: {misses}")

    targets = []
    for client in CLIENTS:
        for numerator, denominator, target, meaning in TARGETS:
            r = harness.ratio(series, numerator.format(c=client), denominator.format(c=client))
            targets.append({
                "client": client, "numerator": r.numerator, "denominator": r.denominator,
                "meaning": meaning, "target": target, "ratio": r.median,
                "spread": r.spread, "met": r.median <= target,
            })
    informative = {}
    for numerator, denominator in (("stock_floor", "our_floor"),
                                   ("ours_hit[pymemcache]", "ours_local_hit[pymemcache]"),
                                   ("ours_hit_shield[pymemcache]", "ours_hit[pymemcache]"),
                                   ("ours_hit_rotating[pymemcache]", "ours_hit[pymemcache]"),
                                   ("ldap_uncached", "ours_hit[python-memcached]"),
                                   ("ldap_uncached", "ours_hit[pymemcache]"),
                                   ("ours_hit[python-memcached]", "raw_get"),
                                   ("ours_hit[pymemcache]", "raw_get")):
        r = harness.ratio(series, numerator, denominator)
        informative[f"{numerator} / {denominator}"] = {"ratio": r.median, "spread": r.spread}
    for client in CLIENTS:
        # The caches' own cost, each above the floor of the middleware it runs in.
        r = harness.difference_ratio(series, f"ours_hit[{client}]", "our_floor",
                                     f"dogpile_hit[{client}]", "stock_floor")
        informative[f"{r.numerator} / {r.denominator}"] = {"ratio": r.median,
                                                           "spread": r.spread}

    log(f"latency: breakdown x {settings.rounds} rounds")
    breakdown_cases = build_breakdown(lab, extra["ours"], extra["environ"])
    breakdown = harness.interleaved(breakdown_cases, rounds=settings.rounds,
                                    batch_seconds=settings.batch_seconds)
    split = {}
    for client in CLIENTS:
        parts = {name: breakdown[name].median for name in (
            "our_floor", f"hit_without_network[{client}]", f"backend_get_multi[{client}]",
            f"raw_get_multi[{client}]", f"ours_hit[{client}]")}

        def paired(plus: list[str], minus: list[str], client: str = client) -> float:
            """Median over rounds of a sum and difference of cases measured in one round."""
            rounds = zip(*(breakdown[n.format(c=client)].samples for n in plus + minus),
                         strict=True)
            return statistics.median(
                sum(values[:len(plus)]) - sum(values[len(plus):]) for values in rounds)

        split[client] = {
            "medians_us": parts,
            "our_python_on_hit_path_us": paired(["hit_without_network[{c}]"], ["our_floor"]),
            "backend_get_multi_us": parts[f"backend_get_multi[{client}]"],
            "client_library_over_raw_us": paired(["backend_get_multi[{c}]"],
                                                 ["raw_get_multi[{c}]"]),
            "unexplained_us": paired(["ours_hit[{c}]"], ["hit_without_network[{c}]",
                                                         "backend_get_multi[{c}]"]),
            "hit_over_floor": harness.ratio(breakdown, f"ours_hit[{client}]",
                                            "our_floor").median,
        }

    last = CLIENTS[-1]
    aftermath = statistics.median(
        both - raw - offline for both, raw, offline in zip(
            breakdown["raw_get_multi, then hit_without_network"].samples,
            breakdown[f"raw_get_multi[{last}]"].samples,
            breakdown[f"hit_without_network[{last}]"].samples, strict=True))

    log(f"latency: components of the hit path x {settings.rounds} rounds")
    _args, _kwargs, found = record_hit(extra["ours"]["pymemcache"], extra["environ"])
    pieces, skipped = build_components(lab, extra["environ"], found, "pymemcache")
    components = harness.interleaved(pieces, rounds=settings.rounds,
                                     batch_seconds=settings.batch_seconds / 2)

    log(f"latency: profiling {settings.profile_calls} hits per client")
    profiles = {c: profile_hit(m, extra["environ"], settings.profile_calls)
                for c, m in extra["ours"].items()}
    extra["raw"].close()
    for ldap in extra["dogpile_ldap"].values():
        ldap.close()
    local_hits = {n: after[n]["local_hits"] - counters_before[n]["local_hits"]
                  for n in timed_caches}
    return {
        "cases": {name: s.as_dict() for name, s in series.items()},
        "local_hits_while_timing": local_hits,
        "targets": targets,
        "informative_ratios": informative,
        "breakdown": {name: s.as_dict() for name, s in breakdown.items()},
        "split": split,
        "round_trip_aftermath_us": aftermath,
        "components": {name: c.as_dict() for name, c in components.items()},
        "components_skipped": skipped,
        "profiles": profiles,
        "settings": vars(settings),
    }

"""``latest.md`` (tables, with machine, versions and settings at the top) and the PNG chart."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("repoze_who_memcached", "repoze.who", "zope.interface", "WebOb",
            "python-memcached", "pymemcache", "dogpile.cache", "ldap3", "cryptography",
            "waitress", "matplotlib")
REPO_ROOT = Path(__file__).resolve().parent.parent


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def collect_environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    commit = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                         "--untracked-files=no"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_model()}, {os.cpu_count()} CPUs",
        "os": f"{_os_name()}, Linux {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "memcached": _first_line(["/usr/bin/memcached", "-V"]),
        "slapd": _first_line(["/usr/sbin/slapd", "-VV"]).replace("@(#) $OpenLDAP: ", "")
        .rstrip("$").strip(),
        "commit": commit + (" (with uncommitted changes)" if dirty not in ("", "unknown")
                            else ""),
        "versions": versions,
    }


# ------------------------------------------------------------------ markdown


def _us(value: float) -> str:
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def _spread(samples: list[float]) -> str:
    return f"{_us(min(samples))}..{_us(max(samples))}"


def _table(header: list[str], rows: list[list[Any]], *, text: int = 1) -> list[str]:
    """A markdown table; the first ``text`` columns left-aligned, the others right."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < text else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


CASE_NOTES = {
    "stock_floor": "stock repoze.who: basic auth + accept-all authenticator",
    "our_floor": "the same through our filter (interfaces verified at load time)",
    "ldap_uncached": "our filter + our LDAP authenticator, no cache (search + bind)",
    "ours_hit[python-memcached]": "our filter, LDAP cached by us, hit (python-memcached)",
    "ours_hit[pymemcache]": "our filter, LDAP cached by us, hit (pymemcache)",
    "dogpile_hit[python-memcached]": "stock repoze.who + LDAP memoized by dogpile.cache.memcached",
    "dogpile_hit[pymemcache]": "stock repoze.who + LDAP memoized by dogpile.cache.pymemcache",
    "raw_get": "one memcached get of our entry over a raw socket",
    "ours_local_hit[python-memcached]": "the same as ours_hit, answered by the near cache "
                                        "(local_ttl=60)",
    "ours_local_hit[pymemcache]": "the same as ours_hit, answered by the near cache "
                                  "(local_ttl=60)",
    "ours_hit_shield[pymemcache]": "ours_hit with the lockout shield on (max_failures=5)",
    "ours_hit_rotating[pymemcache]": "ours_hit with a previous secret listed (rotation)",
}


def _header(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    s = results["settings"]
    lines = [
        "# repoze_who_memcached benchmarks",
        "",
        f"Written by `python -m benchmarks.run` ({results['mode']} mode, "
        f"{results['elapsed_seconds']:.0f} s) on {env['date']}. Raw figures: the `.json` "
        "beside this file.",
        "",
        "## Machine, versions, settings",
        "",
    ]
    rows = [
        ["machine", f"{env['cpu']}; {env['os']}"],
        ["Python", env["python"]],
        ["servers", f"{env['memcached']}; {env['slapd']} (stats logging, `-d 256`; "
                    f"{env.get('slapd_indexes', 'slapd not used in this run')})"],
        ["packages", ", ".join(f"{k} {v}" for k, v in env["versions"].items())],
        ["commit", env["commit"]],
        ["pinning", env["pinning"]],
        ["latency", f"{s['latency']['rounds']} interleaved rounds of ~"
                    f"{s['latency']['batch_seconds'] * 1000:.0f} ms per case; GC paused in a "
                    "batch; cProfile over "
                    f"{s['latency']['profile_calls']} hits per client"],
        ["HTTP", f"waitress ({s['http']['server_threads']} threads) in a subprocess; "
                 f"{s['http']['client_threads']} client threads on raw keep-alive sockets; "
                 f"Zipf: {s['http']['rounds']} rounds x {s['http']['seconds']} s per stack, "
                 f"s={s['http']['zipf_s']} over {s['http']['users']} LDAP users; hot: "
                 f"{s['http']['hot_groups']} ABBA groups per stack of "
                 f"{s['http']['hot_slice_seconds']} s slices (noauth, the stack, the stack, "
                 "noauth) over one pool of connections"],
        ["latency-link", f"{s['latency-link']['delay'] * 1e3:.2f} ms each way through "
                         f"the relay; {s['latency-link']['rounds']} rounds of ~"
                         f"{s['latency-link']['batch_seconds'] * 1000:.0f} ms per case; "
                         f"HTTP {s['latency-link']['http']['rounds']} Zipf rounds x "
                         f"{s['latency-link']['http']['seconds']} s per stack and "
                         f"{s['latency-link']['http']['hot_groups']} hot ABBA groups, "
                         f"{s['latency-link']['http']['client_threads']} client threads, "
                         f"{s['latency-link']['http']['server_threads']} server threads"]
        if "latency-link" in s else ["latency-link", "-"],
        ["load", f"{s['load']['threads']} threads per process, up to "
                 f"{s['load']['processes']} processes, {s['load']['trials']} trials, "
                 f"lock_timeout={s['load']['lock_timeout']}"],
        ["scale", f"fills {', '.join(f'{f:,}' for f in s['scale']['fills'])} identities; "
                  f"{s['scale']['sample']} timed identities per fill; "
                  f"{s['scale']['rounds']} rounds"],
    ]
    lines += _table(["", ""], rows, text=2)
    lines += [
        "Every figure is the median over interleaved rounds (range over rounds beside it); "
        "every ratio is the median of per-round ratios, numerator and denominator measured in "
        "the same round. The machine is shared and noisy: compare ratios, not absolutes.",
        "",
    ]
    return lines


def _latency(lat: dict[str, Any]) -> list[str]:
    lines = ["## Targets (ratios measured in this run)", ""]
    rows = []
    for t in lat["targets"]:
        low, high = t["spread"]
        rows.append([f"`{t['numerator']}` / `{t['denominator']}`", t["meaning"],
                     f"**{t['ratio']:.2f}** ({low:.2f}..{high:.2f})", f"≤ {t['target']:.1f}",
                     "met" if t["met"] else "**missed**"])
    lines += _table(["ratio", "meaning", "measured", "target", ""], rows, text=2)

    lines += ["## Per-request latency, in-process", "",
              "One request through the WSGI middleware, Basic credentials of alice "
              "(µs per request).", ""]
    rows = [[f"`{name}`", CASE_NOTES.get(name, ""), _us(c["median_us"]),
             _spread(c["samples_us"])] for name, c in lat["cases"].items()]
    lines += _table(["case", "what", "median µs", "range"], rows, text=2)
    rows = [[k, f"{v['ratio']:.2f}", f"{v['spread'][0]:.2f}..{v['spread'][1]:.2f}"]
            for k, v in lat["informative_ratios"].items()]
    lines += _table(["other ratios", "median", "range"], rows)

    lines += ["### Where our cache hit's time goes", "",
              "Same rounds again: our hit, the same hit with `get_multi` answered from memory "
              "(no network), the plugin's real `get_multi` alone, and a raw-socket get of the "
              "same keys (µs per request).", ""]
    clients = list(lat["split"])
    rows = []
    labels = [("our floor (filter + accept-all)", "our_floor"),
              ("hit without network", "hit_without_network[{c}]"),
              ("backend get_multi alone", "backend_get_multi[{c}]"),
              ("raw socket get of the same keys", "raw_get_multi[{c}]"),
              ("our hit", "ours_hit[{c}]")]
    for label, key in labels:
        rows.append([label] + [_us(lat["split"][c]["medians_us"][key.format(c=c)])
                               for c in clients])
    rows.append(["→ our Python on the hit path (no-network hit - floor), per round"]
                + [_us(lat["split"][c]["our_python_on_hit_path_us"]) for c in clients])
    rows.append(["→ client library over the raw get, per round"]
                + [_us(lat["split"][c]["client_library_over_raw_us"]) for c in clients])
    rows.append(["→ not explained by the parts (hit - no-network hit - get_multi), per round"]
                + [_us(lat["split"][c]["unexplained_us"]) for c in clients])
    lines += _table(["µs per request", *clients], rows)
    if "round_trip_aftermath_us" in lat:
        lines += ["The part not explained by the parts is not ours: a raw-socket get followed by "
                  "the no-network hit costs "
                  f"{_us(lat['round_trip_aftermath_us'])} µs more than the two timed apart "
                  "(per-round median): after a blocking round trip, the code that runs next "
                  "runs slower (likely: the core idled during the wait and caches went cold).", ""]

    if lat.get("components"):
        lines += ["The pieces of our hit path, each timed alone in interleaved rounds "
                  "(pymemcache plugin, its `get_multi` answered from memory):", ""]
        rows = [[name, _us(c["median_us"]), _spread(c["samples_us"])]
                for name, c in lat["components"].items()]
        lines += _table(["piece", "median µs", "range"], rows)
    for skipped in lat.get("components_skipped", []):
        lines += [f"Skipped (a private API changed): {skipped}", ""]
    lines += ["cProfile of our hit through our filter (µs per request *under the profiler*, "
              "which inflates Python-call-heavy code; compare shares, not totals):", ""]
    areas = sorted({a for p in lat["profiles"].values() for a in p["areas_us"]},
                   key=lambda a: -max(p["areas_us"].get(a, 0) for p in lat["profiles"].values()))
    rows = []
    for area in areas:
        cells = []
        for c in clients:
            p = lat["profiles"][c]
            v = p["areas_us"].get(area, 0.0)
            cells.append(f"{_us(v)} ({100 * v / p['total_us']:.0f}%)")
        rows.append([area, *cells])
    rows.append(["total", *[_us(lat["profiles"][c]["total_us"]) for c in clients]])
    lines += _table(["area (self time)", *clients], rows)
    for c in clients:
        lines += [f"Our functions on the hit path, {c} (cumulative µs per request under "
                  "cProfile):", ""]
        rows = [[f"`{f['function']}`", f"{f['calls_per_request']:.0f}",
                 _us(f["self_us"]), _us(f["cumulative_us"])]
                for f in lat["profiles"][c]["our_functions"][:14]]
        lines += _table(["function", "calls", "self µs", "cumulative µs"], rows)
    return lines


def _opt_us(value: float | None) -> str:
    return "-" if value is None else _us(value)


def _http(h: dict[str, Any], title: str = "## Throughput over HTTP",
          intro: str = "", targets_note: str = "") -> list[str]:
    lines = [title, "",
             f"The app server (waitress) on CPU {h['server_cpu']}, alone; memcached, slapd "
             f"and the client threads on CPU(s) {h.get('services_cpus', h['client_cpus'])} "
             "(at a site, memcached and the directory are other hosts: their CPU is not the "
             f"app server's). {intro}User binds: binds as the user's "
             "DN (service binds of the search pool apart). `noauth` is the same app served "
             "with no authentication at all: the baseline that says what the auth layer "
             "costs. App CPU: the server process's user + sys time per request (its own "
             "accounting: `getrusage` over a Zipf phase, `/proc` at the hot workload's slice "
             "edges); busy: its CPU seconds over wall seconds (near 100%: the server, not "
             "the client, set the pace).", ""]
    if h.get("targets"):
        rows = []
        for t in h["targets"]:
            why = ""
            if t.get("errors"):
                why = f"{t['errors']} wrong answers: the ratio does not count"
            elif not t["met"] and t.get("bound_from_misses"):
                why = (f"{t['warm_user_binds_per_1000']:.0f} of 1000 requests in the warm "
                       "rounds were still first sightings (an LDAP search + bind each): even "
                       f"free hits would give at most {t['bound_from_misses']:.1f}x")
            rows.append([f"{t['workload']}: `{t['numerator']}` / `{t['denominator']}`",
                         t["meaning"], "met" if t["met"] else "**missed**", why,
                         f"**{t['ratio']:.2f}**" + (
                             f" (middle half of {t['groups']} groups: "
                             f"{t['middle_half'][0]:.2f} to {t['middle_half'][1]:.2f}"
                             + (f"; the median's 95% interval: {t['median_ci95'][0]:.3f} to "
                                f"{t['median_ci95'][1]:.3f}" if t.get("median_ci95") else "")
                             + ")" if t.get("middle_half") else ""),
                         f"≥ {t['target']:.2f}"])
        lines += [targets_note, ""] if targets_note else []
        lines += _table(["requests/s ratio", "meaning", "", "why", "measured", "target"],
                        rows, text=4)
        lines += ["Hot ratios: the median, over ABBA groups, of each stack's requests/s over "
                  "`noauth`'s measured around it: one pool of keep-alive connections asks for "
                  "noauth, the stack, the stack, noauth, a slice each (a fraction of a "
                  "second), and each slice's rate is counted after the previous stack's last "
                  "response (the machine's speed drifts over seconds: each stack is compared "
                  "with its own baseline, and a steady drift cancels out; `benchmarks/abba.py` "
                  "says how). Zipf ratios: median of per-round ratios to `uncached` over the "
                  "warm rounds (round 2 on; round 1 starts from an empty cache, and is in the "
                  "tables below).", ""]
    lines += [f"python-ldap: {h.get('python_ldap', 'not measured')}. Refresh-ahead: "
              f"{h.get('refresh_ahead', 'not measured')}.", ""]
    cpu = h.get("cpu_per_request")
    if cpu:
        lines += ["**CPU per request** (workload hot: every cached request a hit). What "
                  "decides how many app servers a site needs:", ""]
        rows = [[label, f"`{r['target']}`", _us(r["app_cpu_us"]), _us(r["over_noauth_us"]),
                 f"{100 * r['server_busy']:.0f}%", _opt_us(r["memcached_cpu_us"]),
                 _opt_us(r["slapd_cpu_us"])] for label, r in cpu.items()]
        lines += _table(["request", "stack", "app CPU µs", "over no-auth µs", "app busy",
                         "memcached CPU µs", "slapd CPU µs"], rows, text=2)
    titles = {
        "zipf": "users drawn from a Zipf distribution over all generated users; round 1 of a "
                "cached stack starts cold, later rounds find what earlier rounds cached",
        "hot": "only the most popular users, cached beforehand: every cached request is a hit",
    }
    for name, w in h["workloads"].items():
        if "groups" in w:
            lines += _hot_workload(w, titles.get(name, ""))
            continue
        lines += [f"**Workload {name}** ({w['users']:,} users, {w['seconds']} s per stack and "
                  f"round): {titles.get(name, '')}.", ""]
        rows = []
        for target, s in w["summary"].items():
            later = s["user_binds_per_1000_later"]
            rows.append([f"`{target}`", f"{s['rps']:,.0f}", f"{s['rps_over_noauth']:.2f}",
                         f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}",
                         _us(s["cpu_us_per_request"]), f"{100 * s['server_busy']:.0f}%",
                         f"{s['requests']:,}", s["errors"],
                         f"{s['user_binds_per_1000_round1']:.0f}",
                         "-" if later is None else f"{later:.1f}", s["service_binds"],
                         s["distinct_users_round1"]])
        lines += _table(["stack", "req/s", "over noauth", "p50 ms", "p99 ms", "app CPU µs/req",
                         "busy", "requests", "errors", "user binds /1000 req, round 1",
                         "later rounds", "service binds", "distinct users, round 1"], rows)
        speed = ", ".join(f"{k} {v:.1f}x" for k, v in w["rps_over_uncached"].items())
        warm = ", ".join(f"{k} {v:.1f}x" for k, v in w.get("rps_over_uncached_warm",
                                                          {}).items())
        lines += [f"Requests per second, cached over uncached (median of per-round ratios): "
                  f"all rounds {speed}; warm rounds {warm}.", ""]
        rows = [[p["round"], f"`{p['target']}`", f"{p['rps']:,.0f}", f"{p['p50_ms']:.2f}",
                 f"{p['p99_ms']:.2f}", _us(p["cpu_us_per_request"]),
                 f"{100 * p['server_busy']:.0f}%", p["requests"], p["user_binds"],
                 f"{p['user_binds_per_1000']:.1f}", p.get("cache_hits", "-"),
                 p.get("local_hits", "-"), p.get("cache_misses", "-")] for p in w["phases"]]
        lines += [f"<details><summary>every phase of workload {name}</summary>", ""]
        lines += _table(["round", "stack", "req/s", "p50 ms", "p99 ms", "app CPU µs/req",
                         "busy", "requests", "user binds", "per 1000", "cache hits",
                         "of which local", "misses"], rows)
        lines += ["</details>", ""]
    lines += [f"User binds during workload zipf counted by the authenticators: "
              f"{h['user_binds_counted']:,}; in slapd's log over the same time: "
              f"{h['user_binds_in_slapd_log']:,}.", ""]
    return lines


def _hot_workload(w: dict[str, Any], title: str) -> list[str]:
    """The sliced ABBA workload: per stack, its rate, ratio and the spread of its groups."""
    lines = [f"**Workload hot** ({w['users']:,} users; {w['groups_per_stack']} ABBA groups per "
             f"stack, slices of {w['slice_seconds']} s, each counted from "
             f"{w['settle_seconds'] * 1e3:.0f} ms after the switch or after the previous "
             f"stack's last response): {title}.", ""]
    rows = []
    for target, s in w["summary"].items():
        ratios = [g["ratio"] for g in w["groups"] if g["target"] == target]
        spread = "-"
        if len(ratios) >= 4:
            q = statistics.quantiles(ratios, n=4)
            spread = f"{q[0]:.3f} to {q[2]:.3f}"
        rows.append([f"`{target}`", f"{s['rps']:,.0f}", f"{s['rps_over_noauth']:.3f}", spread,
                     f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}",
                     _opt_us(s["cpu_us_per_request"]),
                     "-" if s["server_busy"] is None else f"{100 * s['server_busy']:.0f}%",
                     f"{s['requests']:,}", s["errors"], s.get("cache_hits", "-"),
                     s.get("local_hits", "-"), s.get("cache_misses", "-"),
                     s.get("user_binds", "-")])
    lines += _table(["stack", "req/s (median slice)", "over noauth", "middle half of groups",
                     "p50 ms", "p99 ms", "app CPU µs/req", "busy", "requests", "errors",
                     "cache hits", "of which local", "misses", "user binds"], rows)
    return lines


LINK_NOTES = {
    "ldap_uncached@link": "our LDAP authenticator, no cache, slapd across the link",
    "ldap_uncached@loopback": "the same, slapd on loopback",
    "ours_hit[python-memcached]@link": "our memcached hit, memcached across the link",
    "ours_hit[pymemcache]@link": "our memcached hit, memcached across the link",
    "ours_hit[pymemcache]@loopback": "the same, memcached on loopback",
    "ours_local_hit[pymemcache]@link": "our near-cache hit (local_ttl=60), memcached across "
                                       "the link",
    "our_floor": "our filter + accept-all authenticator (no network)",
    "raw_get@link": "one raw-socket memcached get through the relay: the link's round trip",
    "raw_get@loopback": "the same get on loopback",
}


def _link(lk: dict[str, Any]) -> list[str]:
    delay = lk["delay_ms_each_way"]
    lines = ["## Across a data-centre link", "",
             f"memcached and slapd reached through our delaying TCP relay ({delay:.2f} ms "
             "each way, and one more round trip before the first request of each new "
             "connection: the TCP handshake a real link costs; every uncached LDAP login "
             "opens a connection to bind). The relay is its own process on CPU(s) "
             f"{lk['relay_cpus']}, not the measured one's. In-process latency, interleaved "
             "rounds, alice's Basic credentials (µs per request):", ""]
    rows = [[f"`{name}`", LINK_NOTES.get(name, ""), _us(c["median_us"]),
             _spread(c["samples_us"])] for name, c in lk["cases"].items()]
    lines += _table(["case", "what", "median µs", "range"], rows, text=2)
    rows = [[k, f"{v['ratio']:.2f}", f"{v['spread'][0]:.2f}..{v['spread'][1]:.2f}"]
            for k, v in lk["ratios"].items()]
    lines += _table(["ratio (same rounds)", "median", "range"], rows)
    lines += _http(lk["http"], "### Throughput over HTTP across the link",
                   "memcached and slapd through the relay. ",
                   "The targets belong to the loopback section above; here they are shown "
                   "for information: what the same ratios become across the link.")
    return lines


def _load(ld: dict[str, Any]) -> list[str]:
    lines = ["## Backend load: concurrent first requests for one identity", "",
             "All threads of all processes send the same new identity at the same instant. "
             "Binds: binds as that user's DN in slapd's log, per trial.", ""]
    rows = []
    for s in ld["scenarios"]:
        trials = s["trials"]
        rows.append([
            s["client"], s["scenario"], s["expected_binds"],
            ", ".join(str(t["binds_in_slapd_log"]) for t in trials),
            "; ".join("/".join(map(str, t["binds_per_process"])) for t in trials),
            ", ".join(f"{t['answered_right']}/{t['requests']}" for t in trials),
            ", ".join(f"{t['slowest_ms']:.0f}" for t in trials),
            ", ".join(str(t.get("cache_errors", "?")) for t in trials),
            "met" if s["met"] else "**missed**",
        ])
    lines += _table(["client", "scenario", "expected binds", "binds (slapd log)",
                     "per process", "answered right", "slowest ms", "cache errors", ""],
                    rows, text=2)
    return lines


def _scale(sc: dict[str, Any]) -> list[str]:
    fills = sc["settings"]["fills"]
    lines = ["## Scale: cached identities and memcached servers", "",
             "A cache hit through our filter, cycling over the timed identities (µs per "
             "request, median; range below).", ""]
    rows = []
    for client in ("python-memcached", "pymemcache"):
        for n in (1, 3):
            cells = []
            for f in fills:
                c = sc["cases"][f"{client}|{n}|{f}"]
                cells.append(f"{_us(c['median_us'])} ({_spread(c['samples_us'])})")
            rows.append([client, n, *cells])
    for client in ("python-memcached", "pymemcache"):
        for n in (1, 3):
            key = f"dogpile[{client}]|{n}|{fills[0]}"
            if key in sc["cases"]:
                c = sc["cases"][key]
                rows.append([f"dogpile.cache ({client})", n,
                             f"{_us(c['median_us'])} ({_spread(c['samples_us'])})",
                             *["" for _ in fills[1:]]])
    lines += _table(["client", "servers",
                     *[f"{f:,} identit{'y' if f == 1 else 'ies'}" for f in fills]], rows)
    rows = [[k, f"{v:.2f}"] for k, v in sc["ratios"].items()]
    lines += _table(["ratio (same run)", "median"], rows)
    rows = []
    for f, info in sc["fills"].items():
        rows.append([f"{int(f):,}", info["timed_identities"], info["entry_bytes"],
                     "; ".join(f"{n}: " + "/".join(f"{x:,}" for x in v)
                               for n, v in info["items_per_server"].items()),
                     info["evictions"]])
    lines += _table(["fill", "timed identities", "entry value bytes",
                     "items per server (1 server; 3 servers)", "evictions"], rows)
    lines += ["Choosing a server (µs per request's worth of keys):", ""]
    rows = [[name, _us(s["median_us"]), _spread(s["samples_us"])]
            for name, s in sc["selection"].items()]
    lines += _table(["selection", "median µs", "range"], rows)
    growth = []
    for name, single in sc["selection"].items():
        if "[1 server]" in name:
            triple = sc["selection"].get(name.replace("[1 server]", "[3 servers]"))
            if triple:
                growth.append(f"{name.split(' [')[0]}: {_us(single['median_us'])} µs with 1 "
                              f"server, {_us(triple['median_us'])} µs with 3")
    if growth:
        lines += ["Selection cost, 1 and 3 servers: " + "; ".join(growth) + ".", ""]
    return lines


def markdown(results: dict[str, Any], chart_name: str) -> str:
    lines = _header(results)
    lines += [f"![chart]({chart_name})", ""]
    if "latency" in results:
        lines += _latency(results["latency"])
    if "http" in results:
        lines += _http(results["http"])
    if "latency-link" in results:
        lines += _link(results["latency-link"])
    if "load" in results:
        lines += _load(results["load"])
    if "scale" in results:
        lines += _scale(results["scale"])
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------ chart


def write_chart(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    (ax_lat, ax_tgt), (ax_http, ax_scale) = axes
    env = results["environment"]
    fig.suptitle(f"repoze_who_memcached benchmarks ({results['mode']}), {env['date']}; "
                 f"{env['cpu']}; {env['python']}", fontsize=11)

    lat = results.get("latency")
    if lat:
        names = list(lat["cases"])
        medians = [lat["cases"][n]["median_us"] for n in names]
        colors = ["tab:green" if n.startswith("ours") else "tab:orange"
                  if n.startswith("dogpile") else "tab:gray" for n in names]
        ax_lat.barh(names, medians, color=colors)
        ax_lat.set_xscale("log")
        ax_lat.invert_yaxis()
        ax_lat.set_xlabel("µs per request (median, log scale)")
        ax_lat.set_title("Per-request latency, in-process")
        for y, v in enumerate(medians):
            ax_lat.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        labels = [f"{t['numerator']}\n/ {t['denominator']}" for t in lat["targets"]]
        values = [t["ratio"] for t in lat["targets"]]
        ax_tgt.barh(range(len(values)), values,
                    color=["tab:green" if t["met"] else "tab:red" for t in lat["targets"]])
        for y, t in enumerate(lat["targets"]):
            ax_tgt.plot([t["target"], t["target"]], [y - 0.4, y + 0.4], color="black", lw=2)
            ax_tgt.text(t["ratio"], y, f" {t['ratio']:.2f}", va="center", fontsize=8)
        ax_tgt.set_yticks(range(len(values)), labels, fontsize=7)
        ax_tgt.invert_yaxis()
        ax_tgt.set_xlabel("ratio (median of per-round ratios); black tick = target")
        ax_tgt.set_title("Targets: green met, red missed")
    else:
        for ax in (ax_lat, ax_tgt):
            ax.text(0.5, 0.5, "latency not run", ha="center", transform=ax.transAxes)

    http = results.get("http")
    if http:
        workloads = list(http["workloads"])
        targets = list(next(iter(http["workloads"].values()))["summary"])
        width = 0.8 / len(workloads)
        top = 0.0
        for i, name in enumerate(workloads):
            summary = http["workloads"][name]["summary"]
            xs = [x + i * width for x in range(len(targets))]
            rps = [summary[t]["rps"] for t in targets]
            top = max(top, *rps)
            ax_http.bar(xs, rps, width, label=f"workload {name}")
            for x, t in zip(xs, targets, strict=True):  # latency is in the report's tables
                ax_http.text(x, summary[t]["rps"], f"{summary[t]['rps']:,.0f}", ha="center",
                             va="bottom", fontsize=6, rotation=90)
        ax_http.set_xticks([x + width * (len(workloads) - 1) / 2 for x in range(len(targets))],
                           targets, rotation=30, ha="right", fontsize=7)
        ax_http.set_ylabel("requests per second (median over rounds)")
        ax_http.set_ylim(0, top * 1.2)
        ax_http.legend(fontsize=8, loc="upper left")
        ax_http.set_title("HTTP through waitress: uncached LDAP vs cached")
    else:
        ax_http.text(0.5, 0.5, "HTTP not run", ha="center", transform=ax_http.transAxes)

    sc = results.get("scale")
    if sc:
        fills = sc["settings"]["fills"]
        for client, marker in (("python-memcached", "o"), ("pymemcache", "s")):
            for n, style in ((1, "-"), (3, "--")):
                ys = [sc["cases"][f"{client}|{n}|{f}"]["median_us"] for f in fills]
                ax_scale.plot(fills, ys, style, marker=marker,
                              label=f"{client}, {n} server{'s' if n > 1 else ''}")
        ax_scale.set_xscale("log")
        ax_scale.set_ylim(bottom=0)
        ax_scale.set_xlabel("cached identities")
        ax_scale.set_ylabel("µs per cache hit (median)")
        ax_scale.set_title("Scale: cached identities, 1 vs 3 memcached servers")
        ax_scale.legend(fontsize=8)
    else:
        ax_scale.text(0.5, 0.5, "scale not run", ha="center", transform=ax_scale.transAxes)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

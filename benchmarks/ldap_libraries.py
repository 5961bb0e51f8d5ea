"""An uncached LDAP login with each ``ldap_library``, side by side in one run.

``python -m benchmarks.ldap_libraries [--logins N]`` starts a private slapd (the sample
users), then times our LDAP authenticator with no cache in front (a pooled service search,
then a user bind on a fresh connection: what every cache miss costs) with ldap3 and with
python-ldap, in alternating rounds so that a noisy neighbour hits both alike. It prints
the CPU time of this process per login (``time.process_time``: what the library costs the
application server; slapd's own work is not in it), the wall time per login, and their
ratios. Both run in the same process, on the same slapd, with the same options.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from repoze_who_memcached.ldap import make_authenticator
from repoze_who_memcached.testing import SlapdServer

from . import servers

LIBRARIES = ("ldap3", "python-ldap")
ROUNDS = 6


def _round(plugin: Any, logins: int) -> tuple[float, float]:
    """CPU and wall seconds per login over ``logins`` uncached logins."""
    identity = {"login": "alice", "password": "wonderland"}
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(logins):
        if plugin.authenticate({}, dict(identity)) is None:
            raise RuntimeError("the benchmark login was refused")
    return (time.process_time() - cpu) / logins, (time.perf_counter() - wall) / logins


def run(logins: int = 600) -> dict[str, dict[str, float]]:
    """Median CPU and wall microseconds per uncached login for each library."""
    servers.pin_to({servers.available_cpus()[0]})
    samples: dict[str, dict[str, list[float]]] = {
        name: {"cpu": [], "wall": []} for name in LIBRARIES
    }
    with SlapdServer() as slapd:
        plugins = {
            name: make_authenticator(
                url=slapd.url, base_dn=slapd.users_base_dn, bind_dn=slapd.reader_dn,
                bind_password=slapd.reader_password, ldap_library=name,
            )
            for name in LIBRARIES
        }
        try:
            for plugin in plugins.values():
                _round(plugin, 20)  # warm up: pooled connection, imports, slapd caches
            for index in range(ROUNDS):
                order = LIBRARIES if index % 2 == 0 else LIBRARIES[::-1]
                for name in order:
                    cpu, wall = _round(plugins[name], logins // ROUNDS)
                    samples[name]["cpu"].append(cpu)
                    samples[name]["wall"].append(wall)
        finally:
            for plugin in plugins.values():
                plugin.close()
    return {
        name: {kind: statistics.median(values) * 1e6 for kind, values in kinds.items()}
        for name, kinds in samples.items()
    }


def markdown(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| uncached LDAP login (search + bind) | CPU µs / login | wall µs / login |",
        "|---|---|---|",
    ]
    for name, row in results.items():
        lines.append(f"| ldap_library = {name} | {row['cpu']:,.0f} | {row['wall']:,.0f} |")
    first, second = (results[name] for name in LIBRARIES)
    lines.append(f"| ratio {LIBRARIES[0]} / {LIBRARIES[1]} | {first['cpu'] / second['cpu']:.1f}x "
                 f"| {first['wall'] / second['wall']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ldap_libraries",
                                     description=__doc__)
    parser.add_argument("--logins", type=int, default=600,
                        help="uncached logins per library (default 600)")
    args = parser.parse_args(argv)
    print(markdown(run(args.logins)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

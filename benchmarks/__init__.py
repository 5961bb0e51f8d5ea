"""Benchmarks of repoze_who_memcached against real memcached and slapd (``make bench``).

Never part of ``make test``. Run ``python -m benchmarks.run`` (full, a few minutes) or
``python -m benchmarks.run --quick`` (well under a minute, for development). Results go to
``benchmarks/results/``: ``latest.md`` (tables, with the machine, versions and settings at
the top), ``latest.png`` (the chart) and ``latest.json`` (every raw figure).

Modules, by topic:

* ``run``        - the entry point: options, orchestration, writing the results
* ``servers``    - private memcached and slapd pinned to one core, a benchmark LDIF
* ``harness``    - interleaved rounds, medians, paired ratios
* ``stacks``     - the WSGI stacks compared (stock repoze.who, our filter, dogpile.cache)
* ``latency``    - per-request latency in-process, the targets, and profiling
* ``throughput`` - HTTP through waitress: requests/s, p50/p99, LDAP binds per 1000 requests
* ``load``       - backend load: concurrent first requests, one LDAP bind per process/cluster
* ``scale``      - 1 to 10**6 cached identities, 1 and 3 memcached servers, both clients
* ``report``     - ``latest.md`` and the PNG chart

How figures are made: every figure is the median over several rounds, and the cases that
are compared run interleaved within each round, so a ratio is the median of per-round
ratios measured side by side. The benchmark process and the servers share one CPU core
(loopback round trips across cores cost ~10x those within one; see NOTES.md).
"""

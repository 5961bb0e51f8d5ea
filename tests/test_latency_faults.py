"""A fault across a data-centre link: memcached and slapd reached through our delaying relay
(benchmarks/relay.py, 0.25 ms each way), the stack of test_faults.py under load, and the
link to memcached cut (a partition: memcached keeps its data) then restored.

What must hold, as on loopback: only 200 or 401, no wrong login, no request beyond the
bound, and cache hits again once the link is back.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_faults import (
    CLIENTS,
    MEMCACHED_GRACE,
    check_cache_recovered,
    check_invariants,
    memcached_servers,
    run_scenario,
    served,
)

from benchmarks.relay import DATA_CENTRE_DELAY, DelayingRelay

pytestmark = pytest.mark.slow  # real servers across a delaying relay, real time


class Across:
    """A server as the stack sees it across a relay: its attributes, the relay's url."""

    def __init__(self, server: Any, relay: DelayingRelay, scheme: str = "") -> None:
        self._server = server
        self.url = f"{scheme}{relay.url}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


@pytest.mark.parametrize("client", CLIENTS)
def test_memcached_link_cut_across_a_data_centre_link(tmp_path, slapd, client):
    with memcached_servers(1) as (memcached,), \
            DelayingRelay((memcached.host, memcached.port), DATA_CENTRE_DELAY) as to_memcached, \
            DelayingRelay((slapd.host, slapd.port), DATA_CENTRE_DELAY) as to_slapd, \
            served(tmp_path, Across(slapd, to_slapd, "ldap://"),
                   [Across(memcached, to_memcached)], client) as stack:
        run = run_scenario(stack, to_memcached.cut, to_memcached.restore)
    check_invariants(run, MEMCACHED_GRACE)
    check_cache_recovered(run, MEMCACHED_GRACE)
    # The stack really went through the relays (the cut took effect).
    during = run.select(lambda r: r.status == 200 and run.timeline.within_fault(r))
    assert during and all(r.auth != "hit" for r in during), run.describe(
        "hits while the link to memcached was cut", during)

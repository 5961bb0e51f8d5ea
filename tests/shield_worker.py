"""Another app server for the lockout shield test: its own process, the same memcached,
secret and slapd, trying one login with wrong passwords.

    python shield_worker.py MEMCACHED_URL SECRET LDAP_URL BASE_DN BIND_DN BIND_PASSWORD
                            LOGIN ATTEMPTS START_AT

Prints one JSON line: each attempt's userid (None for a denial) and the cache's counters.
"""

from __future__ import annotations

import json
import sys
import time

from repoze_who_memcached import make_plugin
from repoze_who_memcached.ldap import make_authenticator


def main() -> None:
    url, secret, ldap_url, base_dn, bind_dn, bind_password, login, attempts, start_at = (
        sys.argv[1:10])
    ldap = make_authenticator(url=ldap_url, base_dn=base_dn, bind_dn=bind_dn,
                              bind_password=bind_password)
    cache = make_plugin(authenticator=ldap, secret=secret, memcached_urls=url,
                        max_failures="5", failure_window="300")
    time.sleep(max(0.0, float(start_at) - time.time()))  # the processes start together
    answers = []
    for attempt in range(int(attempts)):
        identity = {"login": login, "password": f"wrong-{attempt}-{time.time()}"}
        answers.append(cache.authenticate({}, identity))
    print(json.dumps({"answers": answers, "counters": cache.counters.snapshot()}))


if __name__ == "__main__":
    main()

"""Another app server: a separate process using the same memcached and secret.

    python proc_worker.py URL SECRET MODE [--threads N] [--start-at T] [--delay S]
                          [--lock-timeout S] [--login L] [--password P]

Prints one JSON line: the backend calls this process made and each thread's userid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))

from backends_for_tests import CountingAuthenticator

from repoze_who_memcached import make_plugin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("secret")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--lock-timeout", default="0")
    parser.add_argument("--login", default="alice")
    parser.add_argument("--password", default="wonderland")
    args = parser.parse_args()
    backend = CountingAuthenticator(delay=args.delay)
    plugin = make_plugin(memcached_urls=args.url, secret=args.secret,
                         authenticator_name="backend", lock_timeout=args.lock_timeout)
    plugin.bind({"backend": backend})
    results: list = [None] * args.threads

    def work(n: int) -> None:
        identity = {"login": args.login, "password": args.password}
        results[n] = plugin.authenticate({}, identity)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(args.threads)]
    print(json.dumps({"ready": True}), flush=True)
    if args.start_at:
        time.sleep(max(0.0, args.start_at - time.time()))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"calls": backend.calls, "results": results}), flush=True)


if __name__ == "__main__":
    main()

"""The package's memos: plain dicts, read with ``dict.get`` on the request path, bounded.

Every memo here is keyed by what a client can vary (logins, credentials' digests, replies,
User-Agents), so each has a size limit; past it the memo is emptied, not trimmed: emptying
is O(1) amortised, and a memo that fills again holds what is asked for now.
"""

from __future__ import annotations

from typing import Any


def remember(memo: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """``memo[key] = value``, emptying ``memo`` first if it holds ``limit`` entries."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value

"""What the handoff announced to each LB node: the newest revision, and whether a
re-assertion (force) waits. `P:l4:NODE:announced` (revision) and `P:l4:NODE:force`.

A node's queue holds at most one apply task: while one waits, a newer announcement only
raises the revision here, and the task takes it when it runs ("bring the node to at least
the newest revision"). So a node that is offline for a day finds one task on its return,
not one per revision and per re-assertion period (2,880 a day at 30 s).
"""

from __future__ import annotations

from dataclasses import dataclass

from slb.storage.store import Store

_RAISE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
if ARGV[2] == '1' then redis.call('SET', KEYS[2], '1') end
return redis.call('LLEN', KEYS[3])"""


@dataclass(frozen=True)
class Announced:
    revision: int
    force: bool


class Announcements:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._raise = store.redis.register_script(_RAISE)

    def record(self, node: str, queue: str, revision: int, *, force: bool) -> bool:
        """Note the announcement for `node`; True if a task must be sent (none waits in
        `queue`, the Celery queue's list under the store's prefix)."""
        waiting = self._raise(
            keys=[self._key(node, "announced"), self._key(node, "force"),
                  self.store.key("celery", queue)],
            args=[revision, "1" if force else "0"],
        )  # fmt: skip
        return not int(waiting)

    def take(self, node: str) -> Announced:
        """What a task of `node` must bring it to: the newest revision announced, and
        whether a re-assertion waits (taken: the next task does not repeat it)."""
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.get(self._key(node, "announced"))
        pipe.getdel(self._key(node, "force"))
        revision, force = pipe.execute()
        return Announced(int(revision or 0), bool(force))

    def _key(self, node: str, what: str) -> str:
        return self.store.key("l4", node, what)

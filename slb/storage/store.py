"""The desired state in Redis: revisioned, atomic, and followable.

Every write is one Lua script, so it is atomic: it checks each object's expected
revision, bumps one global revision that only grows, stores the documents with that
revision, and appends one entry to the change stream whose ID is the revision. A write
that changes nothing bumps nothing, so consumers are never woken for no reason.

Readers take a consistent snapshot (one MULTI/EXEC over every kind) tagged with its
revision, then follow the change stream from that revision onward, like a Kubernetes
list + watch (`slb.storage.follow` does it for every reader). The stream is trimmed; a
read behind the trim point gets `CompactedError`, and the reader takes a new snapshot, as
a watcher relists on 410 Gone.

Layout under the prefix `P` (one Redis, not Cluster: the script builds its key names):
  P:revision        the global revision
  P:doc:KIND        hash, key -> document (see `slb.model.dump_document`)
  P:rev:KIND        hash, key -> revision at which the object last changed
  P:changes         stream, ID "REV-0", fields: changes (JSON [[op, kind, key], ...]), meta,
                    store (the store-id that committed it)
  P:store-id        the store's identity: random, set by its first write (`slb.integrity`)
  P:synced          cmi's mark: JSON {store_id, revision, at} after a full rebuild
  P:syncing         the store-id cmi is rebuilding now, while it does
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar, cast

import redis

from slb.config import RedisSettings
from slb.model import KINDS, StoredObject, dump_document, load_document
from slb.snapshot import Change, Delete, Op, Put, Snapshot, Stored, Synced
from slb.storage import connect

T = TypeVar("T", bound=StoredObject)

DEFAULT_PREFIX = "openslb"
DEFAULT_STREAM_LENGTH = 100_000


class StoreError(Exception):
    """Base of the store's own errors."""


class ConflictError(StoreError):
    """An optimistic-concurrency check failed: someone changed the object first."""

    def __init__(self, kind: str, key: str, expected: int, actual: int) -> None:
        self.kind, self.key, self.expected, self.actual = kind, key, expected, actual
        state = "does not exist" if actual == 0 else f"is at revision {actual}"
        want = "not to exist" if expected == 0 else f"at revision {expected}"
        super().__init__(f"{kind} {key!r} {state}; the write expected it {want}")


class FencedError(StoreError):
    """A writer holding an older fencing token than the newest one seen: it was deposed."""

    def __init__(self, name: str, token: int, current: int) -> None:
        self.name, self.token, self.current = name, token, current
        super().__init__(f"{name} token {token} is older than {current}: another leader writes now")


@dataclass(frozen=True)
class Fence:
    """A leader's fencing token: writes with an older token than one already seen fail."""

    name: str
    token: int


class RewoundError(StoreError):
    """The store's revision is behind one already read from it: it was emptied, or restored
    from an older copy. Take a new snapshot (and see `slb.integrity`)."""

    def __init__(self, since: int, current: int) -> None:
        self.since, self.current = since, current
        super().__init__(f"the store is at revision {current}, behind {since} read before")


class CompactedError(StoreError):
    """The change stream no longer holds the revisions asked for: take a new snapshot."""

    def __init__(self, since: int, oldest: int) -> None:
        self.since, self.oldest = since, oldest
        super().__init__(f"changes after revision {since} were trimmed (oldest kept: {oldest})")


_WRITE = """
local prefix, maxlen = ARGV[1], tonumber(ARGV[2])
local ops = cjson.decode(ARGV[3])
if ARGV[5] ~= '' then
  local fence_key, token = prefix .. ':fence:' .. ARGV[5], tonumber(ARGV[6])
  local current = tonumber(redis.call('GET', fence_key) or '-1')
  if token < current then
    return {'fenced', tostring(current)}
  end
  if token > current then
    redis.call('SET', fence_key, token)
  end
end
for _, op in ipairs(ops) do
  if op.expect ~= cjson.null then
    local current = tonumber(redis.call('HGET', prefix .. ':rev:' .. op.kind, op.key) or '0')
    if current ~= op.expect then
      return {'conflict', op.kind, op.key, tostring(op.expect), tostring(current)}
    end
  end
end
local store_id = redis.call('GET', prefix .. ':store-id')
if not store_id then
  store_id = ARGV[7]
  redis.call('SET', prefix .. ':store-id', store_id)
end
local changed = {}
for _, op in ipairs(ops) do
  local doc_key = prefix .. ':doc:' .. op.kind
  local old = redis.call('HGET', doc_key, op.key)
  if op.op == 'put' and old ~= op.doc then
    changed[#changed + 1] = op
  elseif op.op == 'delete' and old then
    changed[#changed + 1] = op
  end
end
if #changed == 0 then
  return {'unchanged', redis.call('GET', prefix .. ':revision') or '0'}
end
local revision = redis.call('INCR', prefix .. ':revision')
local summary = {}
for _, op in ipairs(changed) do
  local doc_key, rev_key = prefix .. ':doc:' .. op.kind, prefix .. ':rev:' .. op.kind
  if op.op == 'put' then
    redis.call('HSET', doc_key, op.key, op.doc)
    redis.call('HSET', rev_key, op.key, revision)
  else
    redis.call('HDEL', doc_key, op.key)
    redis.call('HDEL', rev_key, op.key)
  end
  summary[#summary + 1] = {op.op, op.kind, op.key}
end
redis.call('XADD', prefix .. ':changes', 'MAXLEN', '~', maxlen, revision .. '-0',
           'changes', cjson.encode(summary), 'meta', ARGV[4], 'store', store_id)
return {'ok', tostring(revision)}
"""


class Store:
    """Revisioned desired state in one Redis database, under a key prefix."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        prefix: str = DEFAULT_PREFIX,
        stream_length: int = DEFAULT_STREAM_LENGTH,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.stream_length = stream_length
        self._write = client.register_script(_WRITE)
        self._mark_synced = client.register_script(self._MARK_SYNCED)

    @classmethod
    def connect(cls, settings: RedisSettings) -> Store:
        """The store of `settings`, authenticated as configured (ACL user, password file)."""
        return cls(connect.client(settings), settings.prefix)

    def key(self, *parts: str) -> str:
        """A Redis key under this store's prefix (every layout in `slb.storage` keeps its here)."""
        return ":".join((self.prefix, *parts))

    # -- writes ---------------------------------------------------------------------------

    def fence_token(self, name: str) -> int:
        """The newest fencing token of `name` a write has carried (-1: none)."""
        raw = self.redis.get(self.key("fence", name))
        return int(raw) if raw is not None else -1

    def apply(self, ops: Iterable[Op], *, fence: Fence | None = None, **meta: str) -> int:
        """Commit every op or none; return the revision that holds them.

        Ops that would not change anything are dropped; if none is left, no revision is
        made and the current one is returned. `meta` (who, why) rides on the change. With a
        `fence`, the write fails (FencedError) if a newer token of that name was seen.
        """
        encoded = [self._encode(op) for op in ops]
        if not encoded:
            return self.revision()
        reply = self._write(
            args=[
                self.prefix,
                self.stream_length,
                json.dumps(encoded),
                json.dumps(meta),
                fence.name if fence else "",
                fence.token if fence else 0,
                uuid.uuid4().hex,  # the store's identity, if this is its first write
            ]
        )
        status = reply[0].decode()
        if status == "fenced":
            assert fence is not None
            raise FencedError(fence.name, fence.token, int(reply[1]))
        if status == "conflict":
            kind, key, expected, actual = (part.decode() for part in reply[1:])
            raise ConflictError(kind, key, int(expected), int(actual))
        return int(reply[1])

    def put(
        self,
        obj: StoredObject,
        expect: int | None = None,
        *,
        fence: Fence | None = None,
        **meta: str,
    ) -> int:
        return self.apply([Put(obj, expect)], fence=fence, **meta)

    def delete(
        self,
        kind: str,
        key: str,
        expect: int | None = None,
        *,
        fence: Fence | None = None,
        **meta: str,
    ) -> int:
        return self.apply([Delete(kind, key, expect)], fence=fence, **meta)

    @staticmethod
    def _encode(op: Op) -> dict[str, Any]:
        expect = op.expect
        if isinstance(op, Put):
            return {
                "op": "put",
                "kind": op.obj.kind,
                "key": op.obj.key,
                "doc": dump_document(op.obj),
                "expect": expect,
            }
        if op.kind not in KINDS:
            raise StoreError(f"unknown kind {op.kind!r}")
        return {"op": "delete", "kind": op.kind, "key": op.key, "expect": expect}

    # -- reads ----------------------------------------------------------------------------

    def revision(self) -> int:
        return int(self.redis.get(self.key("revision")) or 0)

    def get(self, cls: type[T], key: str) -> Stored[T] | None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(self.key("doc", cls.kind), key)
        pipe.hget(self.key("rev", cls.kind), key)
        doc, rev = pipe.execute()
        if doc is None:
            return None
        return Stored(cast(T, load_document(doc)), int(rev))

    def all(self, cls: type[T]) -> dict[str, Stored[T]]:
        """Every object of one kind, by key."""
        return self.snapshot(kinds=[cls.kind]).of(cls)

    def snapshot(self, kinds: Iterable[str] = KINDS) -> Snapshot:
        """Every object of `kinds` and the revision they belong to, read atomically, with
        the store's identity and cmi's marks on it."""
        kinds = list(kinds)
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(self.key("revision"))
        pipe.get(self.key("store-id"))
        pipe.get(self.key("synced"))
        pipe.get(self.key("syncing"))
        for kind in kinds:
            pipe.hgetall(self.key("doc", kind))
            pipe.hgetall(self.key("rev", kind))
        replies = pipe.execute()
        objects: dict[str, dict[str, Stored[StoredObject]]] = {}
        for i, kind in enumerate(kinds):
            docs, revs = replies[4 + 2 * i], replies[5 + 2 * i]
            objects[kind] = {
                key.decode(): Stored(load_document(doc), int(revs[key]))
                for key, doc in docs.items()
            }
        revision, store_id, synced, syncing = replies[:4]
        return Snapshot(
            int(revision or 0),
            objects,
            store_id=store_id.decode() if store_id else None,
            synced=Synced(**json.loads(synced)) if synced else None,
            syncing=syncing.decode() if syncing else None,
        )

    # -- the store's identity and cmi's marks (`slb.integrity`) ---------------------------

    def identity(self) -> str:
        """The store's identity, made now if nothing has written the store yet."""
        self.redis.set(self.key("store-id"), uuid.uuid4().hex, nx=True)
        return (self.redis.get(self.key("store-id")) or b"").decode()

    def mark_syncing(self, store_id: str) -> None:
        """cmi rebuilds this store from Kubernetes: consumers hold until it is marked synced."""
        self.redis.set(self.key("syncing"), store_id)

    _MARK_SYNCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
return 1"""

    def mark_synced(self, store_id: str, revision: int, *, adopted: bool = False) -> Synced | None:
        """Mark the store complete at `revision`, if it is still the store `store_id` (None:
        it was emptied or replaced meanwhile, and the mark would lie). `adopted`: an
        operator's mark, not cmi's."""
        synced = Synced(store_id, revision, time.time(), adopted)
        done = self._mark_synced(
            keys=[self.key("store-id"), self.key("synced"), self.key("syncing")],
            args=[store_id, json.dumps(synced.__dict__)],
        )
        return synced if done else None

    def advance(self, snapshot: Snapshot, batch: Sequence[Change]) -> Snapshot:
        """`snapshot` moved forward past `batch`, reading only the objects the batch touched
        of the kinds the snapshot holds.

        Objects that did not change stay the very same Python objects (cheap comparisons
        downstream), and a consumer pays for what changed, not for the whole store.
        """
        if not batch:
            return snapshot
        touched = sorted({(kind, key) for change in batch for _, kind, key in change.ops})
        touched = [(kind, key) for kind, key in touched if kind in snapshot.objects]
        pipe = self.redis.pipeline(transaction=True)
        for kind, key in touched:
            pipe.hget(self.key("doc", kind), key)
            pipe.hget(self.key("rev", kind), key)
        replies = pipe.execute() if touched else []
        objects = dict(snapshot.objects)  # a kind the batch touched is copied, the rest shared
        copies = {kind: dict(objects[kind]) for kind in {kind for kind, _ in touched}}
        objects.update(copies)
        for i, (kind, key) in enumerate(touched):
            doc, rev = replies[2 * i], replies[2 * i + 1]
            by_key = copies[kind]
            if doc is None:
                by_key.pop(key, None)
            else:
                by_key[key] = Stored(load_document(doc), int(rev))
        # An object may already be read at a newer revision than the batch's last; the
        # snapshot still claims only that one, so the next batch re-reads everything a
        # newer revision touched (claiming more would skip the rest of that revision).
        return replace(snapshot, revision=batch[-1].revision, objects=objects)

    # -- the change stream ----------------------------------------------------------------

    def changes(
        self, since: int, limit: int = 10_000, *, block_ms: int | None = None
    ) -> list[Change]:
        """Committed changes after revision `since`, oldest first, at most `limit` of them.

        With `block_ms`, wait up to that long for one if none is there yet (keep it below
        the client's socket timeout). CompactedError: the stream was trimmed past `since`.
        """
        reply = self.redis.xread({self.key("changes"): f"{since}-0"}, count=limit, block=block_ms)
        changes = [self._decode(entry) for _, entries in reply or [] for entry in entries]
        self._check_contiguous(since, changes)
        return changes

    def _check_contiguous(self, since: int, changes: list[Change]) -> None:
        """Every revision has one stream entry, so a gap can only mean trimming."""
        if changes and changes[0].revision != since + 1:
            raise CompactedError(since, changes[0].revision)
        if not changes and since > (current := self.revision()):
            raise RewoundError(since, current)
        if not changes and since < current:
            first = self.redis.xrange(self.key("changes"), count=1)
            oldest = self._decode(first[0]).revision if first else self.revision() + 1
            if oldest > since + 1:
                raise CompactedError(since, oldest)

    @staticmethod
    def _decode(entry: tuple[bytes, dict[bytes, bytes]]) -> Change:
        entry_id, fields = entry
        ops = tuple((op, kind, key) for op, kind, key in json.loads(fields[b"changes"]))
        store_id = fields.get(b"store")
        return Change(
            revision=int(entry_id.split(b"-")[0]),
            ops=cast(tuple[tuple[Literal["put", "delete"], str, str], ...], ops),
            meta=json.loads(fields.get(b"meta", b"{}")),
            store_id=store_id.decode() if store_id else None,
        )

"""The newest revision an xDS server has published, `P:xds:published`.

The one thing the server writes back beside status reports: the pipeline's
`openslb.l7.apply` task (`l7.tasks`) waits on it to know the revision was taken up.
"""

from __future__ import annotations

from slb.storage.store import Store


def record_published(store: Store, revision: int) -> None:
    """Note that the xDS server now serves `revision` (to every Envoy that is connected)."""
    store.redis.set(store.key("xds", "published"), revision)


def published_revision(store: Store) -> int:
    """The newest revision an xDS server has published; -1 if none has yet."""
    raw = store.redis.get(store.key("xds", "published"))
    return int(raw) if raw is not None else -1

"""Redis ACL users, one per role and one per LB node, so that no part of openslb holds
more than it needs.

`slb redis-acl --dir DIR [--node NAME ...]` writes a random password per user
(DIR/USER.password, 0600) and DIR/users.acl for Redis's `aclfile` directive (0600; it holds
SHA-256 hashes, never a password). Each openslb process then names its user in
`redis.username` and its password file in `redis.password_file`. Keys live under the store
prefix `P`:

- **cmi** (the controller, `slb worker --control`, operators' `slb` commands): every key
  under `P:`, Celery's pub/sub, every command but the dangerous ones (FLUSHALL, FLUSHDB,
  CONFIG, DEBUG, SHUTDOWN, KEYS, MONITOR, ACL, ...).
- **node-NAME**, one per LB node (`slb worker --node NAME`, `slb envoy-stats --node-id
  NAME`): reads the desired state
  (`P:revision`, `P:doc:*`, `P:rev:*`, `P:changes`, and the store's identity and marks,
  `P:store-id`, `P:synced`, `P:syncing`), never the certificates' private keys; writes
  only keys of its own: `P:l4:NAME:*` (its lock, ownership record, status, alarm, stats,
  announcements), `P:l7:NAME:*` (its Envoy's view of the backends), `P:applies:l4:NAME`,
  its own chart points (`P:ts:SERIES:listener=*,node=NAME,tier=l4` and `tier=l7`, and
  `P:ts:SERIES:backend=*,listener=*,node=NAME,tier=l7`), and its Celery queue `P:celery:l4.NAME`
  and that queue's bindings;
  to the shared sets `P:status:l4-nodes` and `P:ts-index:*` it may only add (SADD).
  Celery's Redis transport (kombu) and result backend keep some bookkeeping every consumer
  shares, under `P:celery:` (`global_keyprefix`): `unacked`, `unacked_index`,
  `unacked_mutex`, `celery-task-meta-*` and the result channels; remote control is off
  (no worker listens for broadcasts). A node that is taken over can thus neither rewrite
  the desired state, nor read private keys, console accounts or the audit trail, nor forge
  or hide another node's status, lock or ownership record, nor flush or reconfigure Redis;
  through Celery's shared keys it can at most drop or re-queue "bring yourself up to
  date" tasks, which cmi's periodic re-assertion repeats (the tests run a real node worker
  under its user in the lab VM and check Redis's ACL log for anything it was denied).
- **xds** (`slb xds`): reads the desired state and the certificates' keys it hands to
  Envoys (`P:secret:*`, it alone), writes only the L7 reports and its alarm (`P:status:*`);
  no pub/sub.
- **console** (`slb console`): every key under `P:` (it writes operators' objects,
  accounts, the audit trail and uploaded keys), no pub/sub, no dangerous command.

The `default` user is switched off: a client that does not authenticate can do nothing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from slb.pipeline import l4_queue
from slb.pki import write_secret

ACL_FILE = "users.acl"
COMMANDS = "+@all -@dangerous"
"""Everything but @dangerous: FLUSHALL, FLUSHDB, CONFIG, DEBUG, SHUTDOWN, KEYS, MONITOR,
ACL, SAVE, REPLICAOF, CLIENT KILL, ... (an operator administers Redis as a user of their own)."""


DESIRED = ("revision", "doc:*", "rev:*", "changes", "store-id", "synced", "syncing")
"""What the data planes read: the desired state, the store's identity and cmi's marks."""


def key_rules(role: str, prefix: str, db: int = 0) -> list[str]:
    """The key and channel patterns of a role or LB node user (`%R~` read only, `~` read
    and write, `&` pub/sub channels, `(...)` a Redis 7 selector: keys with the commands
    it names only)."""
    # Celery publishes and SUBSCRIBEs (results) on channels under P:celery:, which the
    # glob grants. (Remote control is off, so no worker PSUBSCRIBEs to its fanout topic.)
    channels = [f"&{prefix}:celery:*"]
    reads = [f"%R~{prefix}:{k}" for k in DESIRED]
    if role == "cmi":
        return [f"~{prefix}:*", *channels]
    if role == "console":
        return [f"~{prefix}:*"]
    if role == "xds":
        return [*reads, f"%R~{prefix}:secret:*", f"~{prefix}:status:*"]
    if node := node_of(role):
        own = [f"l4:{node}:*", f"l7:{node}:*", f"applies:l4:{node}",
               f"ts:*:listener=*,node={node},tier=l4", f"ts:*:listener=*,node={node},tier=l7",
               f"ts:*:backend=*,listener=*,node={node},tier=l7",
               f"celery:{l4_queue(node)}", f"celery:_kombu.binding.{l4_queue(node)}",
               f"celery:_kombu.binding_permanent.{l4_queue(node)}", *CELERY_SHARED]  # fmt: skip
        add_only = f"(~{prefix}:status:l4-nodes ~{prefix}:ts-index:* +sadd)"
        return [*reads, *(f"~{prefix}:{k}" for k in own), *channels, add_only]
    raise ValueError(f"role: expected one of {', '.join(ROLES)} or node-NAME, got {role!r}")


ROLES = ("cmi", "xds", "console")
NODE_USER = "node-"
"""An LB node's user is `node-` and its name (`slb redis-acl --node NAME`)."""
CELERY_SHARED = ("celery:unacked", "celery:unacked_index", "celery:unacked_mutex",
                 "celery:celery-task-meta-*")  # fmt: skip
"""Keys kombu and Celery's result backend share among every consumer of the broker."""
_NODE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


def node_user(node: str) -> str:
    """The Redis user of LB node `node`; its name is checked: it goes into key patterns."""
    if not _NODE.match(node):
        raise ValueError(f"--node: {node!r} is not an LB node name (a DNS label)")
    return NODE_USER + node


def node_of(user: str) -> str | None:
    """The node a `node-NAME` user is for, else None."""
    if not user.startswith(NODE_USER):
        return None
    node = user.removeprefix(NODE_USER)
    return node if _NODE.match(node) else None


def acl_line(user: str, password: str, prefix: str, db: int = 0) -> str:
    digest = hashlib.sha256(password.encode()).hexdigest()
    rules = " ".join(key_rules(user, prefix, db))
    return f"user {user} on resetpass #{digest} resetkeys resetchannels {COMMANDS} {rules}"


def acl_text(passwords: dict[str, str], prefix: str, db: int = 0) -> str:
    # An ACL file takes no comments: Redis refuses to start on any line but `user ...`.
    lines = [
        "user default off resetpass resetkeys resetchannels -@all",
        *(acl_line(user, password, prefix, db) for user, password in passwords.items()),
    ]
    return "\n".join(lines) + "\n"


def database(url: str) -> int:
    """The database number of a Redis URL (redis://HOST/DB, unix://PATH?db=DB), which
    Celery's fanout topics name."""
    parts = urlsplit(url)
    query = parse_qs(parts.query).get("db", [""])[0]
    db = query if parts.scheme == "unix" or query else parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"redis.url: the database {db!r} is not a number")
    return int(db or 0)


@dataclass(frozen=True)
class AclFiles:
    acl_file: Path
    password_files: dict[str, Path]
    created: tuple[str, ...]
    """Roles whose password was made now (others kept theirs)."""


def write(
    directory: Path,
    prefix: str,
    db: int = 0,
    *,
    nodes: Iterable[str] = (),
    rotate: bool = False,
) -> AclFiles:
    """Write a password per role and per LB node (kept if there, unless `rotate`) and the
    ACL file. Nodes given before keep their user: a `node-NAME.password` in `directory`
    names one."""
    if not prefix or any(c.isspace() or c in "*?[]()\\" for c in prefix):
        raise ValueError(f"redis.prefix: {prefix!r} cannot be used in an ACL key pattern")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    known = {p.name.removesuffix(".password") for p in directory.glob(f"{NODE_USER}*.password")}
    users = [*ROLES, *sorted({node_user(n) for n in nodes} | {u for u in known if node_of(u)})]
    passwords, files, created = {}, {}, []
    for user in users:
        path = directory / f"{user}.password"
        files[user] = path
        if path.exists() and not rotate:
            passwords[user] = path.read_text().strip()
            if passwords[user]:
                continue
        passwords[user] = secrets.token_hex(32)
        write_secret(path, passwords[user] + "\n")
        created.append(user)
    acl_file = directory / ACL_FILE
    write_secret(acl_file, acl_text(passwords, prefix, db))
    return AclFiles(acl_file, files, tuple(created))

"""Redis ACL users, one per role, so that no part of openslb holds more than it needs.

`slb redis-acl --dir DIR` writes a random password per role (DIR/ROLE.password, 0600) and
DIR/users.acl for Redis's `aclfile` directive (0600; it holds SHA-256 hashes, never a
password). Each openslb process then names its role in `redis.username` and its password
file in `redis.password_file`. Keys live under the store prefix `P`:

- **cmi** (the controller, `slb worker --control`, operators' `slb` commands): every key
  under `P:`, Celery's pub/sub, every command but the dangerous ones (FLUSHALL, FLUSHDB,
  CONFIG, DEBUG, SHUTDOWN, KEYS, MONITOR, ACL, ...).
- **worker** (`slb worker --node` on LB nodes): reads the desired
  state (`P:revision`, `P:doc:*`, `P:rev:*`, `P:changes`, and the store's identity and marks,
  `P:store-id`, `P:synced`, `P:syncing`), never the certificates' private keys, writes only
  what the tiers report
  (`P:status:*`, `P:l4:*`, `P:applies:*`, the time series `P:ts:*`,
  `P:ts-index:*`) and Celery's keys. Celery's Redis transport (kombu) and result backend
  put every key and channel under `P:celery:` (`global_keyprefix`): queues, `unacked*`,
  `_kombu.binding.*`, `celery-task-meta-*` and the result channels (remote control is off:
  no worker listens for broadcasts); the tests run a real worker under this
  user and check Redis's ACL log for anything it was denied. A
  node that is taken over can thus neither rewrite the desired state, nor read private keys,
  console accounts or the audit trail, nor flush or reconfigure Redis.
- **xds** (`slb xds`): reads the desired state and the certificates' keys it hands to
  Envoys (`P:secret:*`, it alone), writes only the L7 reports and its alarm (`P:status:*`);
  no pub/sub.
- **console** (`slb console`): every key under `P:` (it writes operators' objects,
  accounts, the audit trail and uploaded keys), no pub/sub, no dangerous command.

The `default` user is switched off: a client that does not authenticate can do nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from slb.pki import write_secret

ACL_FILE = "users.acl"
COMMANDS = "+@all -@dangerous"
"""Everything but @dangerous: FLUSHALL, FLUSHDB, CONFIG, DEBUG, SHUTDOWN, KEYS, MONITOR,
ACL, SAVE, REPLICAOF, CLIENT KILL, ... (an operator administers Redis as a user of their own)."""


def key_rules(role: str, prefix: str, db: int = 0) -> list[str]:
    """The key and channel patterns of a role (`%R~` read only, `~` read and write, `&`
    pub/sub channels)."""
    # Celery publishes and SUBSCRIBEs (results) on channels under P:celery:, which the
    # glob grants. (Remote control is off, so no worker PSUBSCRIBEs to its fanout topic.)
    channels = [f"&{prefix}:celery:*"]
    if role == "cmi":
        return [f"~{prefix}:*", *channels]
    if role == "console":
        return [f"~{prefix}:*"]
    desired = ["revision", "doc:*", "rev:*", "changes", "store-id", "synced", "syncing"]
    if role == "worker":
        writes = ["status:*", "l4:*", "applies:*", "ts:*", "ts-index:*", "celery:*"]
        return [
            *(f"%R~{prefix}:{k}" for k in desired),
            *(f"~{prefix}:{k}" for k in writes),
            *channels,
        ]
    if role == "xds":
        return [*(f"%R~{prefix}:{k}" for k in [*desired, "secret:*"]), f"~{prefix}:status:*"]
    raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")


ROLES = ("cmi", "worker", "xds", "console")


def acl_line(role: str, password: str, prefix: str, db: int = 0) -> str:
    digest = hashlib.sha256(password.encode()).hexdigest()
    rules = " ".join(key_rules(role, prefix, db))
    return f"user {role} on resetpass #{digest} resetkeys resetchannels {rules} {COMMANDS}"


def acl_text(passwords: dict[str, str], prefix: str, db: int = 0) -> str:
    # An ACL file takes no comments: Redis refuses to start on any line but `user ...`.
    lines = [
        "user default off resetpass resetkeys resetchannels -@all",
        *(acl_line(role, passwords[role], prefix, db) for role in ROLES),
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


def write(directory: Path, prefix: str, db: int = 0, *, rotate: bool = False) -> AclFiles:
    """Write a password per role (kept if there, unless `rotate`) and the ACL file."""
    if not prefix or any(c.isspace() or c in "*?[]\\" for c in prefix):
        raise ValueError(f"redis.prefix: {prefix!r} cannot be used in an ACL key pattern")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    passwords, files, created = {}, {}, []
    for role in ROLES:
        path = directory / f"{role}.password"
        files[role] = path
        if path.exists() and not rotate:
            passwords[role] = path.read_text().strip()
            if passwords[role]:
                continue
        passwords[role] = secrets.token_hex(32)
        write_secret(path, passwords[role] + "\n")
        created.append(role)
    acl_file = directory / ACL_FILE
    write_secret(acl_file, acl_text(passwords, prefix, db))
    return AclFiles(acl_file, files, tuple(created))

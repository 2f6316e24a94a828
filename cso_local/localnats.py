"""The NATS users of the local stack (`cso up`): nobody reaches its bus without a password.

On the first start `cso up` makes a random password for each of cso's own users (the four services,
the divisions importer, admin) and keeps them in `<data dir>/nats/users.json`, mode 0600, with their
bcrypt hashes. From the hashes it writes `<data dir>/nats/auth.conf` (cso.natsauth's `authorization`
block, the permissions of `cso nats-config`), which nats-server is started with. Each service is
spawned as its own user; the demo divisions are imported as `divisions`; the CLI connects as
`admin`. Passwords never go into stack.json or a log.

An outside publisher (`cso up --publisher NAME=REGION`, `cso publisher add NAME=REGION`) gets a
password that is printed once and not kept: only its hash is, as a server keeps a password. Adding
one to a running stack rewrites auth.conf and reloads nats-server (SIGHUP), nothing restarts.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts import Topology
from cso import natsauth
from cso.natsauth import Publisher

from . import servers

USERS_FILE = "users.json"
CONFIG_FILE = "auth.conf"
OWN_USERS = (*natsauth.SERVICES, natsauth.DIVISIONS, natsauth.ADMIN)


@dataclass(frozen=True)
class Account:
    user: str
    hash: str  # bcrypt, what nats-server checks
    password: str | None = field(default=None, repr=False)  # kept for cso's own users only
    region: str | None = None  # an outside publisher's region

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hash": self.hash}
        if self.password is not None:
            out["password"] = self.password
        if self.region is not None:
            out["region"] = self.region
        return out


@dataclass(frozen=True)
class LocalUsers:
    """Every NATS user of one local stack, as kept in users.json."""

    path: Path
    accounts: dict[str, Account]

    @property
    def publishers(self) -> tuple[Publisher, ...]:
        return tuple(Publisher(a.user, a.region) for a in self.accounts.values() if a.region is not None)

    def password(self, user: str) -> str:
        account = self.accounts.get(user)
        if account is None or account.password is None:
            raise KeyError(f"{self.path}: no password kept for NATS user {user!r}")
        return account.password


def nats_dir(data_dir: Path) -> Path:
    return Path(data_dir).expanduser().absolute() / "nats"


def users_path(data_dir: Path) -> Path:
    return nats_dir(data_dir) / USERS_FILE


def config_path(data_dir: Path) -> Path:
    return nats_dir(data_dir) / CONFIG_FILE


def new_password() -> str:
    # A letter first: nats-server reads a `$VAR` value starting with a digit as a number, should
    # anyone render these users with `cso nats-config --passwords env`.
    return "p" + secrets.token_hex(20)


def load(data_dir: Path) -> LocalUsers | None:
    """The users kept in data_dir, or None before the first authenticated start."""
    path = users_path(data_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e}); delete it to make new passwords") from None
    accounts: dict[str, Account] = {}
    users = raw.get("users") if isinstance(raw, dict) else None
    if not isinstance(users, dict):
        raise ValueError(f"{path}: users: expected an object of users")
    for user, entry in users.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            raise ValueError(f"{path}: users.{user}.hash: missing")
        accounts[user] = Account(user, entry["hash"], entry.get("password"), entry.get("region"))
    return LocalUsers(path, accounts)


def _save(users: LocalUsers) -> None:
    users.path.parent.mkdir(parents=True, exist_ok=True)
    body = {"users": {name: a.as_json() for name, a in users.accounts.items()}}
    _write_private(users.path, json.dumps(body, indent=2) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Atomically, mode 0600 from the start (never readable by others, not even for a moment)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# bcrypt's least cost. The local stack keeps its own users' passwords beside their hashes (users.json,
# 0600), so a costly hash guards nothing the file mode does not; and nats-server checks the hash at
# every connect: at cost 11 (~0.2 s of CPU each) the services' first connects timed out on a loaded
# 2-core machine, and registry was not ready within a minute.
LOCAL_BCRYPT_ROUNDS = 4


def _hash(password: str) -> str:
    return natsauth.bcrypt_hash(password, LOCAL_BCRYPT_ROUNDS)


def _own(user: str) -> Account:
    password = new_password()
    return Account(user, _hash(password), password)


def ensure(data_dir: Path, publishers: Iterable[Publisher] = ()) -> tuple[LocalUsers, dict[str, str]]:
    """Load the users (made on the first call) and add the publishers not there yet. Returns the
    users and the passwords of the publishers just added: shown once, kept nowhere."""
    users = load(data_dir) or LocalUsers(users_path(data_dir), {})
    accounts = dict(users.accounts)
    changed = False
    for user in OWN_USERS:
        if user not in accounts or accounts[user].password is None:
            accounts[user] = _own(user)
            changed = True
    shown: dict[str, str] = {}
    for publisher in publishers:
        known = accounts.get(publisher.name)
        if known is not None:
            if known.region != publisher.region:
                raise ValueError(f"publisher {publisher.name!r}: already a NATS user of this stack for region "
                                 f"{known.region}, not {publisher.region}; choose another name")
            continue
        shown[publisher.name] = new_password()
        accounts[publisher.name] = Account(publisher.name, _hash(shown[publisher.name]),
                                           region=publisher.region)
    users = LocalUsers(users.path, accounts)
    natsauth.Users(publishers=users.publishers)  # checks names and regions before anything is kept
    if changed or shown:
        _save(users)
    return users, shown


def write_config(data_dir: Path, users: LocalUsers, topology: Topology) -> Path:
    """auth.conf (0600) for nats-server: cso.natsauth's permissions, each password as its hash."""
    hashes = {natsauth.password_env(a.user): a.hash for a in users.accounts.values()}
    text = natsauth.render(topology, natsauth.Users(publishers=users.publishers), passwords="plain", env=hashes,
                           header=f"Written by `cso up` from {users.path}; do not edit (it is written again\n"
                                  "at every start and by `cso publisher add`).")
    path = config_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, text)
    return path


def add_publisher(data_dir: Path, publisher: Publisher, namespace: str = "") -> tuple[str, bool]:
    """`cso publisher add`: a new user bound to its region. Writes auth.conf again and reloads the
    stack's nats-server if it runs with it. Returns the password (shown once) and whether a running
    server was reloaded."""
    known = load(data_dir)
    if known is not None and publisher.name in known.accounts:
        raise ValueError(f"publisher {publisher.name!r}: already a NATS user of this stack ({known.path})")
    users, shown = ensure(data_dir, [publisher])
    path = write_config(data_dir, users, Topology(namespace))
    handle = servers.running(nats_dir(data_dir), "nats")
    reloaded = handle is not None and servers.started_with(handle) == str(path)
    if handle is not None and reloaded:
        servers.reload(handle)
    return shown[publisher.name], reloaded


def credentials(data_dir: Path, user: str) -> tuple[str, str] | None:
    """(user, password) of one of cso's own users of the local stack, if it has them."""
    users = load(data_dir)
    if users is None or user not in users.accounts or users.accounts[user].password is None:
        return None
    return user, users.password(user)


def service_env(users: LocalUsers, service: str) -> dict[str, str]:
    """The environment a service of the stack is spawned with: its own user; its inbox prefix is
    then `_INBOX_<service>` (an inherited CSO_NATS_INBOX_PREFIX must not say otherwise)."""
    return {"CSO_NATS_USER": service, "CSO_NATS_PASSWORD": users.password(service), "CSO_NATS_INBOX_PREFIX": ""}


__all__ = ["CONFIG_FILE", "USERS_FILE", "Account", "LocalUsers", "add_publisher", "config_path", "credentials",
           "ensure", "load", "service_env", "users_path", "write_config"]

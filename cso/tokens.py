"""The local stack's token key, and tokens signed with it (`cso token`).

`cso up` makes an HS256 secret (48 random bytes, URL-safe text) in its data dir on first start,
`jwt.secret` with mode 0600, and gives it to the services it starts with CSO_AUTH=jwt
(`service_env`); a later start reuses it, so tokens minted earlier stay good until they expire.
`cso token` signs with the same key, or with CSO_JWT_SECRET when that is set (a key of one's own).
Asked for with CSO_AUTH=off, `cso up` starts the services without tokens and says so.

Claims as cso/auth.py checks them: `sub`, `region`, `roles`, `iat`, `exp`, and `source` when given
(the `source` of the events the token's holder files; else their `sub`), `iss` / `aud` when the
services are configured with CSO_JWT_ISSUER / CSO_JWT_AUDIENCE.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt

from .auth import ROLES, SOURCE

SECRET_FILE = "jwt.secret"
SECRET_BYTES = 48
DEFAULT_TTL = "8h"
_TTL = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_SECONDS = 30 * 86400
_REGION = re.compile(r"^(|00|\d{2}|\d{4}|\d{6}|\d{9}|\d{12})$")


class TokenError(ValueError):
    """A token cannot be made; the message names the option or setting that is wrong."""


def secret_path(data_dir: Path) -> Path:
    return Path(data_dir) / SECRET_FILE


def ensure_secret(data_dir: Path) -> tuple[str, bool]:
    """The data dir's secret, made on first use (mode 0600 from its creation: never readable by
    others, not even for a moment); (secret, whether it was made now)."""
    path = secret_path(data_dir)
    try:
        return read_secret(path), False
    except FileNotFoundError:
        pass
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:      # another `cso up` made it meanwhile: use theirs
        return read_secret(path), False
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secret + "\n")
    return secret, True


def read_secret(path: Path) -> str:
    """The secret in `path`; refused if others may read the file or it is too short."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise TokenError(f"{path}: mode {mode:04o} lets others read the token key; chmod 600 {path}")
    secret = path.read_text(encoding="ascii").strip()
    if len(secret.encode()) < 32:
        raise TokenError(f"{path}: an HS256 secret has at least 32 bytes")
    return secret


def service_env(data_dir: Path, environ: Mapping[str, str] | None = None,
                log: Callable[[str], None] = lambda _m: None) -> dict[str, str]:
    """CSO_AUTH and the key for the services `cso up` starts: jwt with the data dir's secret; the
    environment's own key if it has one; nothing but CSO_AUTH=off when the environment asks for it."""
    env = os.environ if environ is None else environ
    mode = (env.get("CSO_AUTH") or "jwt").strip().lower()
    if mode == "off":
        log("WARNING: CSO_AUTH=off (from the environment): the services take HTTP requests without "
            "tokens; anyone who reaches them may write anywhere. Unset CSO_AUTH to require tokens")
        return {"CSO_AUTH": "off"}
    if env.get("CSO_JWT_SECRET") or env.get("CSO_JWT_PUBLIC_KEY"):
        log("HTTP tokens: CSO_AUTH=jwt with the key given in the environment")
        return {"CSO_AUTH": mode}
    secret, made = ensure_secret(data_dir)
    log(f"HTTP tokens: CSO_AUTH=jwt, key {'made in' if made else 'from'} {secret_path(data_dir)} "
        "(`cso token --role ... --region ...` signs one)")
    return {"CSO_AUTH": "jwt", "CSO_JWT_SECRET": secret}


def signing_key(data_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """The key `cso token` signs with: CSO_JWT_SECRET, else the data dir's."""
    env = os.environ if environ is None else environ
    if secret := env.get("CSO_JWT_SECRET"):
        if len(secret.encode()) < 32:
            raise TokenError("CSO_JWT_SECRET: an HS256 secret has at least 32 bytes")
        return secret
    path = secret_path(data_dir)
    try:
        return read_secret(path)
    except FileNotFoundError:
        raise TokenError(f"no token key: {path} does not exist (`cso up --data-dir {data_dir}` makes it) "
                         "and CSO_JWT_SECRET is not set") from None


def parse_ttl(text: str) -> int:
    """Seconds of `30m`, `8h`, `2d`… (at most 30 days: there is no revocation)."""
    match = _TTL.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise TokenError(f"--ttl: {text!r} is not a duration like 30m, 8h or 2d")
    seconds = int(match.group(1)) * _UNIT[match.group(2)]
    if seconds > MAX_TTL_SECONDS:
        raise TokenError(f"--ttl: {text} is more than 30 days; a token cannot be revoked, keep it short")
    return seconds


def claims(roles: Sequence[str], region: str, sub: str, ttl_seconds: int, source: str | None = None,
           environ: Mapping[str, str] | None = None, now: float | None = None) -> dict[str, Any]:
    """A token's claims, checked as the services will check them."""
    env = os.environ if environ is None else environ
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise TokenError(f"--role: {', '.join(unknown)} is not a role (roles: {', '.join(ROLES)})")
    if not _REGION.fullmatch(region):
        raise TokenError(f"--region: {region!r} is not a division code (2, 4, 6, 9 or 12 digits; 00 national)")
    if not sub.strip() or len(sub) > 200:
        raise TokenError("--sub: 1 to 200 characters")
    if source is not None and not SOURCE.fullmatch(source):
        raise TokenError(f"--source: {source!r} is not a source (1-100 of A-Z a-z 0-9 _ . : / -)")
    issued = int(time.time() if now is None else now)
    out: dict[str, Any] = {"sub": sub, "region": region, "roles": list(dict.fromkeys(roles)),
                           "iat": issued, "exp": issued + ttl_seconds}
    if source is not None:
        out["source"] = source
    if issuer := env.get("CSO_JWT_ISSUER"):
        out["iss"] = issuer
    if audience := env.get("CSO_JWT_AUDIENCE"):
        out["aud"] = audience
    return out


def mint(key: str, token_claims: Mapping[str, Any]) -> str:
    return jwt.encode(dict(token_claims), key, algorithm="HS256")


def bearer(data_dir: Path, roles: Sequence[str] = (), region: str = "00", sub: str = "cso-cli",
           ttl_seconds: int = 300) -> dict[str, str]:
    """An Authorization header for the CLI's own requests to the local stack, when it has a key
    (a short-lived token); none when it has none (a stack with CSO_AUTH=off, or no stack)."""
    try:
        key = signing_key(data_dir)
    except TokenError:
        return {}
    return {"Authorization": "Bearer " + mint(key, claims(roles, region, sub, ttl_seconds))}

"""Who is calling: API keys (stored as SHA-256 hashes) mapped to tenants and their quotas, re-read when they change."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.core.errors import UserError

ENV_KEY = "PAVDM_API_KEY"
ENV_TENANT = "default"  # the tenant of PAVDM_API_KEY, the one-tenant shorthand
OPEN = "anonymous"  # every caller, when no key is configured at all (loopback, or --allow-unauthenticated)


@dataclass(frozen=True)
class Tenant:
    """A tenant and its quotas (None = unbounded)."""

    name: str
    key_sha256: str = ""
    max_videos: int | None = None  # videos queued or running at once
    max_video_seconds_per_hour: float | None = None  # seconds of video asked for over the last hour


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys_file(path: Path) -> list[Tenant]:
    """`tenants: {NAME: {key_sha256: HEX, max_videos: N, max_video_seconds_per_hour: S}}`; a malformed file is a
    UserError naming what is wrong (never the keys)."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read serve.keys_file {path}: {type(err).__name__}") from None
    tenants = document.get("tenants") if isinstance(document, dict) else None
    if not isinstance(tenants, dict):
        raise UserError(f"serve.keys_file {path} must hold a 'tenants' mapping")
    found = []
    for name, entry in tenants.items():
        if not isinstance(entry, dict) or set(entry) - {"key_sha256", "max_videos", "max_video_seconds_per_hour"}:
            raise UserError(f"serve.keys_file: tenant '{name}' takes key_sha256, max_videos, "
                            "max_video_seconds_per_hour")
        digest = str(entry.get("key_sha256", "")).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise UserError(f"serve.keys_file: tenant '{name}' needs key_sha256, 64 hex digits")
        found.append(Tenant(str(name), digest, entry.get("max_videos"), entry.get("max_video_seconds_per_hour")))
    return found


class Tenants:
    """The tenants of a server: from serve.keys_file (re-read within `refresh` seconds of a change, so keys rotate
    without a restart) and PAVDM_API_KEY. With neither, every caller is the one open tenant."""

    def __init__(self, keys_file: str, env_key: str | None = None, refresh: float = 1.0):
        self.path = Path(keys_file) if keys_file else None
        self.env_key = os.environ.get(ENV_KEY, "") if env_key is None else env_key
        self.refresh = refresh
        self.lock = threading.Lock()
        self.stamp: tuple[float, int] | None = None
        self.checked = 0.0
        self.known: list[Tenant] = []
        self.reload()

    @property
    def required(self) -> bool:
        return bool(self.path or self.env_key)

    def reload(self) -> None:
        known = [Tenant(ENV_TENANT, key_hash(self.env_key))] if self.env_key else []
        if self.path is not None:
            info = self.path.stat()
            self.stamp = (info.st_mtime, info.st_size)
            known += read_keys_file(self.path)
        self.known = known

    def current(self) -> list[Tenant]:
        """The tenants, re-reading the keys file when it changed (a broken file keeps the last good keys)."""
        with self.lock:
            now = time.monotonic()
            if self.path is not None and now - self.checked >= self.refresh:
                self.checked = now
                try:
                    info = self.path.stat()
                    if (info.st_mtime, info.st_size) != self.stamp:
                        self.reload()
                except (OSError, UserError):
                    pass
            return self.known

    def identify(self, authorization: str) -> Tenant | None:
        """The tenant whose key the `Authorization: Bearer KEY` header carries, or None. Every known hash is
        compared, in constant time, so neither the answer's time nor a log tells which came close."""
        if not self.required:
            return Tenant(OPEN)
        scheme, _, token = authorization.partition(" ")
        presented = key_hash(token.strip()) if scheme.lower() == "bearer" and token.strip() else ""
        match = None
        for tenant in self.current():
            if hmac.compare_digest(presented.encode(), tenant.key_sha256.encode()) and presented:
                match = tenant
        return match

    def named(self, name: str) -> Tenant:
        """A tenant's current settings by name (its quotas may have changed since a request was accepted)."""
        return next((t for t in self.current() if t.name == name), Tenant(name))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, tenants: Tenants, allow_unauthenticated: bool) -> str:
    """Refuse an open server on a non-loopback address (UserError); returns the warning to print, or ''."""
    if tenants.required or is_loopback(host):
        return ""
    if not allow_unauthenticated:
        raise UserError(f"refusing to listen on {host} with no API key: anyone who reaches it could make, read and "
                        f"delete every video; set {ENV_KEY} or serve.keys_file, or pass --allow-unauthenticated")
    return (f"listening on {host} with no API key (--allow-unauthenticated): anyone who reaches it can make, read "
            "and delete every video")

"""Short-lived signed download URLs: how a device fetches a bundle without an API token.

The signature is an HMAC-SHA256 over ``sha256|device|expires`` with the server's
URL secret: `Settings.url_signing_secret`, or when that is empty a random
secret the server makes once and keeps in ``<data_dir>/url-secret`` (mode 0600),
so URLs stay valid across restarts and every server of a fleet sharing the data
dir agrees. A URL names its device, so a leaked one is traceable, and expires
after `Settings.download_url_ttl_s`.

>>> url = signed_download_url(settings, sha, "dev-001", now)
>>> check_download_signature(settings, sha, device="dev-001", expires=..., sig=..., now=now)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

from fleet_server.bundles.errors import NotConfiguredError
from fleet_server.errors import ForbiddenError
from fleet_server.settings import Settings

__all__ = ["check_download_signature", "download_path", "signed_download_url", "url_secret"]

SECRET_FILE = "url-secret"  # noqa: S105 (a file name, not a secret)


_READ: dict[Path, bytes] = {}  # a file read once per process: a new one takes a restart


def url_secret(settings: Settings) -> bytes:
    """The configured secret, or the server's own from ``<data_dir>/url-secret``."""
    if settings.url_signing_secret:
        return settings.url_signing_secret
    path = settings.data_dir / SECRET_FILE
    if (known := _READ.get(path)) is not None:
        return known
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{SECRET_FILE}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process got there first: theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    secret = path.read_bytes().strip()
    if len(secret) < 32:
        raise NotConfiguredError(
            f"the URL signing secret in {path} is shorter than 32 bytes; delete the file "
            "and restart the server to make a new one (outstanding download URLs stop working)"
        )
    _READ[path] = secret
    return secret


def download_path(sha256: str) -> str:
    """The API path of a bundle's download (without the server's public URL)."""
    return f"/api/v1/bundles/{sha256}/download"


def _signature(secret: bytes, sha256: str, device: str, expires: int) -> str:
    message = f"{sha256}|{device}|{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_download_url(settings: Settings, sha256: str, device_id: str, now: datetime) -> str:
    """A URL that lets `device_id` download bundle `sha256` until now + download_url_ttl_s."""
    expires = int(now.timestamp()) + settings.download_url_ttl_s
    sig = _signature(url_secret(settings), sha256, device_id, expires)
    query = urlencode({"device": device_id, "expires": expires, "sig": sig})
    return f"{settings.public_url.rstrip('/')}{download_path(sha256)}?{query}"


def check_download_signature(
    settings: Settings, sha256: str, *, device: str, expires: int, sig: str, now: datetime
) -> None:
    """Accept a signed URL's parameters, or raise `ForbiddenError` saying why not."""
    expected = _signature(url_secret(settings), sha256, device, expires)
    if not hmac.compare_digest(expected, sig.lower()):
        raise ForbiddenError(
            "the download URL's signature does not match (altered, or for another bundle or "
            "device); ask the fleet for a fresh URL",
            field="sig",
        )
    if int(now.timestamp()) >= expires:
        raise ForbiddenError(
            f"the download URL expired at {datetime.fromtimestamp(expires, now.tzinfo).isoformat()}"
            f" (it is now {now.isoformat(timespec='seconds')}); ask the fleet for a fresh URL",
            field="expires",
        )

"""Fetching a bundle from the fleet: resumable, bounded, and never half-written.

`download` streams a URL into ``<dest>.part`` and renames it to `dest` only when
the whole file is there, its size and sha256 match and it has been fsynced: a
file named `dest` is always complete. Whatever stops a transfer (a dropped
connection, a timeout, `cancelled`, the agent being killed) leaves the ``.part``
behind, and the next attempt or the next call resumes it with ``Range``.

Bytes are spliced onto a part only when the server shows it is the same file:
the validator (ETag, else Last-Modified) of the response that started the part
is kept beside it in ``<dest>.part.meta`` and sent as ``If-Range``; a 200, a 416,
a Content-Range that does not continue the part or a different validator starts
the file over from zero. The sha256, when given, has the last word.

Standard library only: this runs on the device. Example::

    path = download(
        "https://fleet.example/bundles/9f2c.efb?token=...",
        Path("/var/lib/edgefleet/downloads/9f2c.efb"),
        size=3_136_772,
        sha256="9f2c...",
        headers={"Authorization": f"Bearer {token}"},
        cancelled=stop.is_set,
        sleep=stop.wait,  # a stop interrupts the backoff too
    )
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

from edge_agent.errors import DownloadError

__all__ = ["DownloadPolicy", "download"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUSES = frozenset({408, 429})  # and every 5xx
_MANAGED_HEADERS = frozenset({"range", "if-range", "accept-encoding"})
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_jitter = random.Random()  # noqa: S311 (spreads retries out; guards nothing)


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    """How hard `download` tries, and how much it accepts.

    `read_timeout_s` bounds each read and `deadline_s` each attempt as a whole:
    ``base_s`` plus the bytes still to come at `min_rate_bps` (bytes a second), so
    a stalled server fails at the read timeout and a server that trickles a byte
    now and then fails at the deadline, while a slow but honest link does not.
    Retries wait `backoff_s`, doubling per failure up to `backoff_max_s`, each
    delay jittered down to half so a fleet does not retry in step; a
    ``Retry-After`` in seconds replaces the delay (still capped).
    """

    max_bytes: int = 512 * 1024 * 1024
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    attempts: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    min_rate_bps: float = 4000.0
    base_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.attempts < 1:
            raise ValueError("DownloadPolicy: max_bytes and attempts must be at least 1")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("DownloadPolicy: timeouts must be positive")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("DownloadPolicy: backoff delays must not be negative")
        if self.min_rate_bps <= 0 or self.base_s < 0:
            raise ValueError("DownloadPolicy: min_rate_bps must be positive, base_s not negative")

    def deadline_s(self, remaining: int) -> float:
        """How long an attempt that still has `remaining` bytes to fetch may take."""
        return self.base_s + max(0, remaining) / self.min_rate_bps


def download(
    url: str,
    dest: Path,
    *,
    size: int | None,
    sha256: str | None,
    policy: DownloadPolicy = DownloadPolicy(),
    headers: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    sleep: Callable[[float], object] = time.sleep,
    cancelled: Callable[[], bool] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    damaged: Callable[[Path, str], None] | None = None,
) -> Path:
    """Download `url` to `dest`, resuming a ``<dest>.part`` left by an earlier try.

    `size` and `sha256` (hex), when given, are what the fleet announced:
    a larger file is refused as soon as that is known, and the finished file must
    match both. `headers` go with every request (not across a redirect to another
    host, for the credential ones). `ssl_context` defaults to the system CAs.
    `sleep` waits between attempts (``threading.Event.wait`` makes a stop cut the
    wait short); `cancelled` is asked between chunks, before each retry and, from
    a watchdog thread, ten times a second while a read or the response is awaited:
    when it turns true the connection is shut down, so a cancel takes effect within
    about 0.1 s however slow the server; the same watchdog ends an attempt that
    runs past its deadline (`DownloadPolicy.deadline_s`).
    `progress(bytes_so_far, total_or_None)` is called after each chunk.
    `damaged(path, reason)` is called when what an earlier try left is found damaged
    (an unreadable ``.part.meta``, a ``.part`` longer than the file or whose bytes do
    not hash to `sha256`): that part is deleted and the file fetched again from byte 0.

    Returns `dest`, complete, fsynced and renamed into place. Raises
    `DownloadError` whose `reason` is ``bad_url``, ``http_status`` (a status
    not worth retrying), ``tls`` (untrusted certificate), ``too_large``,
    ``size_mismatch``, ``hash_mismatch``, ``unreachable`` or ``timeout`` (every
    attempt failed; an attempt past its deadline is a timeout), ``cancelled`` or
    ``disk``; an ``http_status`` error carries the status in `DownloadError.status`.
    The part is deleted when its content is wrong (too large, wrong size or
    digest) and kept otherwise, so the next call resumes it. `policy.attempts`
    bounds the requests of one call; starting a part over from zero does not
    count as a failed attempt.
    """
    if size is not None and size < 0:
        raise ValueError(f"size must not be negative, not {size}")
    if sha256 is not None:
        if not _SHA256.fullmatch(sha256.lower()):
            raise ValueError(f"sha256 must be 64 hex digits, not {sha256!r}")
        sha256 = sha256.lower()
    clashing = sorted(h for h in headers or {} if h.lower() in _MANAGED_HEADERS)
    if clashing:
        raise ValueError(f"headers must not set {', '.join(clashing)}: download() manages them")
    _target(url)  # refuse a bad URL before touching the disk
    transfer = _Transfer(
        url,
        dest,
        size=size,
        sha256=sha256,
        policy=policy,
        headers=dict(headers or {}),
        ssl_context=ssl_context,
        cancelled=cancelled,
        progress=progress,
        damaged=damaged,
    )
    try:
        return transfer.run(sleep)
    except OSError as exc:  # network errors never get here: only the local disk's
        where = exc.filename or transfer.part.path
        raise DownloadError(
            f"cannot write the download of {_redact(url)} to {where}: {exc.strerror or exc}; "
            f"check free space and permissions in {dest.parent}",
            reason="disk",
        ) from exc


class _TransientError(Exception):
    """A failure that another attempt may get past."""

    def __init__(
        self, what: str, *, timeout: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(what)
        self.timeout = timeout
        self.retry_after = retry_after


class _NotResumableError(Exception):
    """The part cannot be continued; the file must be fetched from byte zero."""


class _Watchdog:
    """Shuts an attempt's connection down when `cancelled` turns true or its deadline passes.

    A read blocked on a slow server cannot be woken from its own thread (a socket
    timeout would leave the response unusable), so this thread does it: a
    ``shutdown`` makes the blocked read return at once. `fired` says why.
    """

    POLL_S = 0.1

    def __init__(self, cancelled: Callable[[], bool] | None, deadline_s: float) -> None:
        self.cancelled = cancelled
        self.deadline_s = deadline_s
        self.fired: str | None = None
        self._ends = time.monotonic() + deadline_s
        self._conn: http.client.HTTPConnection | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-download-watch")
        self._thread.daemon = True
        self._thread.start()

    def guard(self, conn: http.client.HTTPConnection) -> None:
        self._conn = conn
        if self.fired:
            self._cut()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.POLL_S):
            if self.cancelled is not None and self.cancelled():
                self.fired = "cancelled"
            elif time.monotonic() >= self._ends:
                self.fired = "deadline"
            else:
                continue
            self._cut()
            return

    def _cut(self) -> None:
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # closed already
                sock.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str
    port: int | None
    path: str  # with the query: the request target

    @property
    def origin(self) -> tuple[str, str, int | None]:
        return self.scheme, self.host, self.port


def _target(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DownloadError(f"bad bundle URL {_redact(url)}: {exc}", reason="bad_url") from None
    if parts.scheme not in ("http", "https"):
        scheme = f"{parts.scheme}://" if parts.scheme else "a URL without a scheme"
        raise DownloadError(
            f"cannot download {_redact(url)}: only http:// and https:// are supported, not "
            f"{scheme}; the fleet must give an HTTP(S) URL for the bundle",
            reason="bad_url",
        )
    if not parts.hostname:
        raise DownloadError(f"bad bundle URL {_redact(url)}: no host", reason="bad_url")
    if parts.username is not None:
        raise DownloadError(
            f"bad bundle URL {_redact(url)}: credentials in the URL are not supported; "
            "pass them in `headers`",
            reason="bad_url",
        )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme, parts.hostname, port, path)


def _redact(url: str) -> str:
    """The URL without its query, fragment or user info: a query may carry a token."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else parts.path


@dataclass(frozen=True, slots=True)
class _Validator:
    """What identifies one version of the file on the server."""

    etag: str | None
    last_modified: str | None

    @classmethod
    def of(cls, response: http.client.HTTPResponse) -> _Validator:
        return cls(response.getheader("ETag"), response.getheader("Last-Modified"))

    def if_range(self) -> str | None:
        """The value for ``If-Range``: a strong ETag, else the date (weak ones may not go)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def contradicts(self, other: _Validator) -> bool:
        return (None not in (self.etag, other.etag) and self.etag != other.etag) or (
            None not in (self.last_modified, other.last_modified)
            and self.last_modified != other.last_modified
        )


class _Part:
    """``<dest>.part``, its running hash, and the validator kept in ``<dest>.part.meta``."""

    def __init__(
        self,
        dest: Path,
        *,
        url: str,
        sha256: str | None,
        damaged: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.path = dest.with_name(dest.name + ".part")
        self.damaged = damaged
        self.meta = dest.with_name(dest.name + ".part.meta")
        self._key = {"url": _redact(url), "sha256": sha256}
        self._hashing = sha256 is not None
        self.size = 0
        self.hasher = hashlib.sha256()
        self.validator: _Validator | None = None

    def load(self) -> None:
        """Take up what an earlier attempt left, unless it was for another file."""
        try:
            meta = json.loads(self.meta.read_text())
        except FileNotFoundError:
            meta = None  # a part from before its meta was written: the digest will tell
        except (OSError, ValueError) as exc:
            meta = {}  # unreadable: start over rather than guess
            self.report(self.meta, f"unreadable: {exc.__class__.__name__}: {exc}")
        if meta is not None and not isinstance(meta, dict):
            meta = {}
            self.report(self.meta, "unreadable: not a JSON object")
        if meta is not None and {k: meta.get(k) for k in self._key} != self._key:
            self.discard()  # damaged, or the part of another file: started over
            return
        if meta is not None:
            self.validator = _Validator(meta.get("etag"), meta.get("last_modified"))
        try:
            with self.path.open("rb") as fh:
                while block := fh.read(1024 * 1024):
                    self._count(block)
        except FileNotFoundError:
            pass

    def start(self, validator: _Validator) -> None:
        """Empty the part for a new file. The old meta goes first, the new one comes
        after the truncation, so a crash in between never pairs new bytes with it."""
        self.meta.unlink(missing_ok=True)
        self.path.write_bytes(b"")
        self.size, self.hasher = 0, hashlib.sha256()
        self.record(validator)

    def record(self, validator: _Validator) -> None:
        self.validator = validator
        meta = {**self._key, "etag": validator.etag, "last_modified": validator.last_modified}
        tmp = self.meta.with_name(self.meta.name + ".tmp")
        with tmp.open("w") as fh:
            json.dump(meta, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.meta)

    def report(self, path: Path, reason: str) -> None:
        """Tell the caller that `path`, left by an earlier try, is damaged (and goes)."""
        log.warning("%s is damaged (%s); the download starts over from byte 0", path, reason)
        if self.damaged is not None and path.exists():
            self.damaged(path, reason)

    def append(self, fh: BinaryIO, block: bytes) -> None:
        fh.write(block)
        self._count(block)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        self.size, self.hasher, self.validator = 0, hashlib.sha256(), None

    def _count(self, block: bytes) -> None:
        self.size += len(block)
        if self._hashing:
            self.hasher.update(block)


class _Transfer:
    """One `download` call: its attempts, and the part they share."""

    def __init__(
        self,
        url: str,
        dest: Path,
        *,
        size: int | None,
        sha256: str | None,
        policy: DownloadPolicy,
        headers: dict[str, str],
        ssl_context: ssl.SSLContext | None,
        cancelled: Callable[[], bool] | None,
        progress: Callable[[int, int | None], None] | None,
        damaged: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.url, self.shown, self.dest = url, _redact(url), dest
        self.size, self.sha256, self.policy = size, sha256, policy
        self.limit = policy.max_bytes if size is None else min(size, policy.max_bytes)
        self.headers = {"User-Agent": "edgefleet-agent", **headers, "Accept-Encoding": "identity"}
        self.ssl_context = ssl_context
        self.cancelled = cancelled
        self.progress = progress
        self.part = _Part(dest, url=url, sha256=sha256, damaged=damaged)

    def run(self, sleep: Callable[[float], object]) -> Path:
        started = time.monotonic()
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        if self._done_before():
            return self.dest
        self.part.load()
        if self.part.size > self.limit:
            self.part.report(self.part.path, f"{self.part.size} bytes, more than the file's")
            self.part.discard()
        if self.part.size and self.part.size == self.size and self.sha256:
            if self.part.hasher.hexdigest() == self.sha256:
                log.info("%s: already complete in %s", self.shown, self.part.path.name)
                return self._finish()
            self.part.report(self.part.path, "complete in size, but not the announced sha256")
            self.part.discard()
        resumed = self.part.size > 0  # bytes from disk, which may be damaged
        failures = 0
        while True:
            self._check_cancelled()
            try:
                self._attempt(failures + 1)
            except _NotResumableError as why:
                # Not a failure: a restart always follows a resume, and from zero there is
                # nothing to resume, so this cannot loop.
                log.info("%s: %s; starting over from byte 0", self.shown, why)
                self.part.discard()
                continue
            except _TransientError as why:
                failures += 1
                if failures >= self.policy.attempts:
                    raise self._gave_up(why, failures, time.monotonic() - started) from None
                delay = self._delay(failures, why.retry_after)
                log.warning(
                    "%s: attempt %d/%d failed (%s); retry in %.1f s",
                    self.shown,
                    failures,
                    self.policy.attempts,
                    why,
                    delay,
                )
                self._check_cancelled()
                sleep(delay)
                continue
            try:
                return self._finish()
            except DownloadError as exc:
                if exc.reason != "hash_mismatch" or not resumed:
                    raise
                # the part taken up from disk was damaged (_finish deleted it): once from byte 0
                log.warning("%s: the resumed partial file was damaged; starting over", self.shown)
                if self.part.damaged is not None:
                    self.part.damaged(
                        self.part.path, "resumed, but the whole file is not the announced sha256"
                    )
                resumed = False

    def _done_before(self) -> bool:
        """A complete `dest` left by an earlier call (stopped before it was used) is kept
        when the announced size and digest say it is the file; anything else there goes."""
        if not self.dest.exists() or self.sha256 is None:
            return False
        digest, size = hashlib.sha256(), 0
        with self.dest.open("rb") as fh:
            while block := fh.read(1024 * 1024):
                digest.update(block)
                size += len(block)
        if digest.hexdigest() == self.sha256 and self.size in (None, size):
            log.info("%s: already downloaded to %s", self.shown, self.dest)
            return True
        self.dest.unlink()
        return False

    def _attempt(self, number: int) -> None:
        offset, headers = self.part.size, dict(self.headers)
        log.info("%s: attempt %d/%d from byte %d", self.shown, number, self.policy.attempts, offset)
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self.part.validator and (value := self.part.validator.if_range()):
                headers["If-Range"] = value
        remaining = (self.size if self.size is not None else self.limit) - offset
        watch = _Watchdog(self.cancelled, self.policy.deadline_s(remaining))
        try:
            conn, response = self._request(headers, watch)
            try:
                total = self._accept(response, offset)
                self._stream(response, total)
            finally:
                response.close()
                conn.close()
        except (_TransientError, _NotResumableError):
            if watch.fired == "cancelled":
                self._check_cancelled()
            if watch.fired == "deadline":
                raise _TransientError(
                    f"too slow: not done within {watch.deadline_s:.0f} s "
                    f"(at least {self.policy.min_rate_bps:g} bytes/s, plus "
                    f"{self.policy.base_s:g} s), at byte {self.part.size}",
                    timeout=True,
                ) from None
            raise
        finally:
            watch.stop()

    def _request(
        self, headers: dict[str, str], watch: _Watchdog
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the GET, following a few redirects; network failures become `_TransientError`."""
        url = self.url
        for _ in range(_MAX_REDIRECTS + 1):
            target = _target(url)
            conn = self._connection(target)
            try:
                doing = f"connecting to {target.host}"
                conn.connect()
                conn.sock.settimeout(self.policy.read_timeout_s)
                watch.guard(conn)
                doing = "waiting for the response"
                conn.request("GET", target.path, headers=headers)
                response = conn.getresponse()
            except ssl.SSLCertVerificationError as exc:
                conn.close()
                raise DownloadError(
                    f"cannot download {_redact(url)}: the TLS certificate of {target.host} is "
                    f"not trusted ({exc.verify_message}); check the agent's CA certificates "
                    "and that the device clock is right",
                    reason="tls",
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise _network_failure(exc, doing) from None
            except DownloadError:
                conn.close()
                raise
            location = response.getheader("Location")
            if response.status not in _REDIRECT_STATUSES or not location:
                return conn, response
            response.close()
            conn.close()
            new = urljoin(url, location)
            if _target(new).origin != target.origin:
                headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
            log.info("%s redirects to %s", _redact(url), _redact(new))
            url = new
        raise DownloadError(
            f"cannot download {self.shown}: more than {_MAX_REDIRECTS} redirects; "
            "check the bundle URL the fleet sends",
            reason="http_status",
        )

    def _connection(self, target: _Target) -> http.client.HTTPConnection:
        timeout = self.policy.connect_timeout_s
        if target.scheme == "http":
            return http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        if self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()
        return http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=self.ssl_context
        )

    def _accept(self, response: http.client.HTTPResponse, offset: int) -> int | None:
        """Judge the status and headers; return the file's total size when known."""
        status = response.status
        if status == 206 and offset:
            total: int | None = self._continuation(response, offset)
        elif status == 200:
            if offset:
                log.info("%s: the whole file came instead of the rest: starting over", self.shown)
            total = response.length  # None when chunked or close-delimited
            self._check_total(total)
            self.part.start(_Validator.of(response))
            return total
        elif status == 416 and offset:
            raise _NotResumableError("the server cannot continue the partial file (HTTP 416)")
        elif status == 206:
            raise _TransientError("HTTP 206 to a request without Range")
        else:
            raise self._refusal(response)
        self._check_total(total)
        return total

    def _continuation(self, response: http.client.HTTPResponse, offset: int) -> int:
        value = (response.getheader("Content-Range") or "").strip()
        match = _CONTENT_RANGE.fullmatch(value)
        if not match or int(match[1]) != offset or int(match[2]) + 1 != int(match[3]):
            raise _NotResumableError(f"Content-Range {value!r} does not continue byte {offset}")
        fresh = _Validator.of(response)
        if self.part.validator is None:
            self.part.record(fresh)
        elif self.part.validator.contradicts(fresh):
            raise _NotResumableError("the file changed on the server (ETag or Last-Modified)")
        return int(match[3])

    def _check_total(self, total: int | None) -> None:
        if total is None:
            return
        if total > self.limit:
            raise self._too_large(f"the server announces {total} bytes")
        if self.size is not None and total != self.size:
            self.part.discard()
            raise DownloadError(
                f"{self.shown} is {total} bytes, but the fleet announced {self.size}; "
                "the fleet's bundle record and file disagree: republish the bundle",
                reason="size_mismatch",
            )

    def _refusal(self, response: http.client.HTTPResponse) -> Exception:
        status, what = response.status, f"HTTP {response.status} {response.reason}".rstrip()
        if status >= 500 or status in _RETRY_STATUSES:
            return _TransientError(what, retry_after=_retry_after(response))
        if status == 403:
            hint = (
                "credentials rejected or the link expired: the fleet renews links with the "
                "desired state; if it persists, check the device's fleet token"
            )
        elif status == 401:
            hint = "credentials rejected: check the device's fleet token or re-provision it"
        elif status in (404, 410):
            hint = "the fleet no longer has this bundle: wait for its next desired state"
        else:
            hint = "not retried: see the fleet server's log"
        return DownloadError(
            f"cannot download {self.shown}: {what}; {hint}", reason="http_status", status=status
        )

    def _stream(self, response: http.client.HTTPResponse, total: int | None) -> None:
        with self.part.path.open("ab") as fh:
            while True:
                self._check_cancelled()
                try:
                    block = response.read1(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _network_failure(exc, "reading the body") from None
                if not block:
                    break
                if self.part.size + len(block) > self.limit:
                    raise self._too_large("the body goes on past that")
                self.part.append(fh, block)
                if self.progress is not None:
                    self.progress(self.part.size, total if self.size is None else self.size)
        expected = total if total is not None else self.size
        if expected is not None and self.part.size < expected:
            raise _TransientError(f"the body was cut short at byte {self.part.size} of {expected}")

    def _finish(self) -> Path:
        part = self.part
        if self.size is not None and part.size != self.size:
            part.discard()
            raise DownloadError(
                f"{self.shown} gave {part.size} bytes, but the fleet announced {self.size}; "
                "the partial file was deleted, the next try starts clean",
                reason="size_mismatch",
            )
        if self.sha256 is not None and (digest := part.hasher.hexdigest()) != self.sha256:
            part.discard()
            raise DownloadError(
                f"{self.shown} has sha256 {digest}, not the announced {self.sha256}: corrupt "
                "or not the announced bundle; the partial file was deleted, the next try "
                "starts clean",
                reason="hash_mismatch",
            )
        _fsync(part.path, os.O_RDWR)
        os.replace(part.path, self.dest)
        _fsync(self.dest.parent, os.O_RDONLY | os.O_DIRECTORY)  # the rename itself
        part.meta.unlink(missing_ok=True)
        log.info("%s: downloaded to %s (%d bytes)", self.shown, self.dest, part.size)
        return self.dest

    def _too_large(self, detail: str) -> DownloadError:
        self.part.discard()
        if self.limit == self.size:
            cap, fix = "the size the fleet announced", "the fleet's bundle record is wrong"
        else:
            cap, fix = "the download cap", "raise the cap if bundles are meant to be this big"
        return DownloadError(
            f"{self.shown} is larger than {cap} ({self.limit} bytes): {detail}; "
            f"nothing was kept; {fix}",
            reason="too_large",
        )

    def _check_cancelled(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise DownloadError(
                f"download of {self.shown} cancelled at byte {self.part.size}; "
                "the partial file is kept, the next try resumes it",
                reason="cancelled",
            )

    def _delay(self, failures: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.policy.backoff_max_s)
        ceiling = self.policy.backoff_s * 2.0 ** min(failures - 1, 32)
        return min(ceiling, self.policy.backoff_max_s) * _jitter.uniform(0.5, 1.0)

    def _gave_up(self, why: _TransientError, failures: int, elapsed: float) -> DownloadError:
        kept = (
            f"; the {self.part.size} bytes received are kept and the next try resumes there"
            if self.part.size
            else ""
        )
        return DownloadError(
            f"cannot download {self.shown}: {failures} attempts over {elapsed:.0f} s failed, "
            f"the last with: {why}{kept}; check the device's network and the fleet server",
            reason="timeout" if why.timeout else "unreachable",
        )


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _retry_after(response: http.client.HTTPResponse) -> float | None:
    value = (response.getheader("Retry-After") or "").strip()
    return float(value) if value.isdigit() else None  # an HTTP date: plain backoff


def _network_failure(exc: BaseException, doing: str) -> _TransientError:
    if isinstance(exc, TimeoutError):
        return _TransientError(f"{doing} timed out", timeout=True)
    if isinstance(exc, ConnectionRefusedError):
        return _TransientError(f"{doing}: connection refused")
    if isinstance(exc, socket.gaierror):
        return _TransientError(f"{doing}: cannot resolve the host ({exc.strerror})")
    if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
        return _TransientError(f"{doing}: the server closed the connection")
    if isinstance(exc, http.client.IncompleteRead):
        return _TransientError(f"{doing}: the body was cut short")
    return _TransientError(f"{doing}: {type(exc).__name__}: {exc}")

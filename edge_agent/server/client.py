"""A client for the agent's local inference server, for applications, benchmarks and tests.

>>> with LocalClient("http://127.0.0.1:8470") as client:
...     probabilities = client.predict({"x": x})["y"]

It keeps one connection open (keep-alive) and reconnects once when the server
has closed it (an idle timeout, an agent restart). Arrays travel as `.npz` both
ways, so dtypes and shapes arrive exactly.

It speaks just the HTTP/1.1 the local server does (every answer has a
Content-Length) over a plain socket: `http.client` costs about 0.2 ms a round
trip here (its e-mail header parser, a reader per response, two writes per
request), which is half the local server's latency budget.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import urlsplit

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.server import codec
from edge_agent.server.http import DEFAULT_PORT
from edge_agent.server.problems import RequestError

__all__ = ["LocalClient", "LocalServerError"]

_MAX_LINE = 65536
_ONE_WRITE = 1 << 16  # bodies up to this size leave with the request head, in one write


class LocalServerError(EdgeAgentError):
    """The local server refused a request, or could not be reached.

    `status` is the HTTP status (None when there was no answer); `error`, `detail`
    and `input` are the server's ``error`` code, message and offending input name.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        error: str | None = None,
        detail: str | None = None,
        input: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.detail = detail
        self.input = input


class _ClosedError(ConnectionError):
    """The server closed the connection before answering."""


class _BrokenAnswerError(Exception):
    """Bytes from the server that are not an HTTP/1.1 answer with a Content-Length."""


class _Connection:
    """One kept-alive connection: a request out in one write, its answer read by length."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def exchange(self, head: bytes, body: bytes | None) -> tuple[int, bool, bytearray]:
        """Send a request; return the answer's status, whether the server closes, its body."""
        if body is not None and len(body) <= _ONE_WRITE:
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            if body is not None:
                self.sock.sendall(body)
        line = self.reader.readline(_MAX_LINE + 1)
        if not line:
            raise _ClosedError("closed without an answer")
        version, _, rest = line.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
            raise _BrokenAnswerError(f"status line {line[:100]!r}")
        fields: dict[bytes, bytes] = {}
        while (raw := self.reader.readline(_MAX_LINE + 1)) not in (b"\r\n", b"\n"):
            name, colon, value = raw.partition(b":")
            if not colon:
                raise _BrokenAnswerError(f"header line {raw[:100]!r}")
            fields[name.strip().lower()] = value.strip()
        length = fields.get(b"content-length", b"")
        if not length.isdigit():
            raise _BrokenAnswerError(f"Content-Length {length[:40]!r}")
        # a bytearray, so the arrays read from it are writable views, not copies
        data = bytearray(int(length))
        view, got = memoryview(data), 0
        while got < len(data):
            n = self.reader.readinto(view[got:])
            if not n:
                raise _BrokenAnswerError(f"the body ended after {got} of {len(data)} bytes")
            got += n
        return int(rest[:3]), b"close" in fields.get(b"connection", b"").lower(), data


class LocalClient:
    """Talks to a `LocalServer` over TCP (`url`) or a Unix socket (`unix_socket`).

    Thread-safe, but requests from several threads take turns on the one
    connection: give each thread its own client to run them in parallel.
    """

    def __init__(
        self,
        url: str = f"http://127.0.0.1:{DEFAULT_PORT}",
        *,
        unix_socket: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._timeout = timeout
        self._unix = unix_socket
        if unix_socket is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"{url!r} is not an http://host:port URL")
            self._address = (parts.hostname, parts.port or 80)
            self._where = url
            host = parts.netloc
        else:
            self._where = f"unix:{unix_socket}"
            host = "localhost"
        self._host = f"\r\nHost: {host}".encode()
        self._conn: _Connection | None = None
        self._lock = threading.Lock()

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the active model on `inputs` (keyed by input name); outputs keyed by name."""
        data = self._call(
            b"POST /v1/predict",
            codec.encode_npz(inputs),
            b"\r\nContent-Type: application/x-npz\r\nAccept: application/x-npz",
        )
        try:
            return codec.decode_npz(data, max_bytes=None)
        except RequestError as exc:
            raise LocalServerError(
                f"the answer from {self._where} is not a readable .npz: {exc}", status=200
            ) from exc

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the agent is ready to serve, and its health body."""
        status, data = self._request(b"GET /v1/health", None, b"")
        if status not in (200, 503):
            self._raise(status, data)
        body: dict[str, Any] = json.loads(data)
        return status == 200, body

    def model(self) -> dict[str, Any]:
        """The active model's description; `LocalServerError` (503) when there is none."""
        info: dict[str, Any] = json.loads(self._call(b"GET /v1/model", None, b""))
        return info

    def metrics(self) -> str:
        """The agent's and the server's metrics, as Prometheus text."""
        return self._call(b"GET /metrics", None, b"").decode()

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        with self._lock:
            self._drop()

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, request: bytes, body: bytes | None, fields: bytes) -> bytearray:
        status, data = self._request(request, body, fields)
        if status != 200:
            self._raise(status, data)
        return data

    def _request(self, request: bytes, body: bytes | None, fields: bytes) -> tuple[int, bytearray]:
        head = request + b" HTTP/1.1" + self._host + fields
        if body is not None:
            head += b"\r\nContent-Length: %d" % len(body)
        head += b"\r\n\r\n"
        with self._lock:
            for attempt in range(2):
                reused = self._conn is not None
                try:
                    conn = self._connection()
                    status, closing, data = conn.exchange(head, body)
                except (_ClosedError, ConnectionResetError, BrokenPipeError) as exc:
                    self._drop()
                    if reused and attempt == 0:
                        continue  # the server closed a kept-alive connection: once more, anew
                    raise LocalServerError(
                        f"the local server at {self._where} closed the connection: {exc}",
                        status=None,
                    ) from exc
                except TimeoutError as exc:
                    self._drop()
                    raise LocalServerError(
                        f"no answer from the local server at {self._where} within "
                        f"{self._timeout} s (a slow model? raise LocalClient's timeout)",
                        status=None,
                    ) from exc
                except OSError as exc:
                    self._drop()
                    raise LocalServerError(
                        f"cannot reach the local server at {self._where}: {exc} "
                        "(is the agent running?)",
                        status=None,
                    ) from exc
                except _BrokenAnswerError as exc:
                    self._drop()
                    raise LocalServerError(
                        f"the local server at {self._where} sent a broken answer: {exc}",
                        status=None,
                    ) from exc
                if closing:
                    self._drop()
                return status, data
        raise AssertionError("unreachable")

    def _connection(self) -> _Connection:
        if self._conn is None:
            if self._unix is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self._timeout)
                    sock.connect(str(self._unix))
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self._address, timeout=self._timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = _Connection(sock)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _raise(self, status: int, data: bytearray) -> NoReturn:
        try:
            body = json.loads(data)
            error, detail = str(body["error"]), str(body["detail"])
            input = body.get("input")
        except (ValueError, KeyError, TypeError):
            error, detail, input = None, data.decode(errors="replace")[:500], None
        raise LocalServerError(
            f"the local server answered {status} {error or ''}".rstrip() + f": {detail}",
            status=status,
            error=error,
            detail=detail,
            input=input,
        )

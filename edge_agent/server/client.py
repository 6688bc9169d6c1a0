"""A client for the agent's local inference server, for applications, benchmarks and tests.

>>> with LocalClient("http://127.0.0.1:8470") as client:
...     probabilities = client.predict({"x": x})["y"]

It keeps one connection open (keep-alive) and reconnects once when the server
has closed it (an idle timeout, an agent restart). Arrays travel as `.npz` both
ways, so dtypes and shapes arrive exactly.
"""

from __future__ import annotations

import http.client
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

_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _read(response: http.client.HTTPResponse) -> bytearray:
    """The whole body, into a bytearray: arrays read from it are writable views."""
    if response.length is None:
        return bytearray(response.read())
    data = bytearray(response.length)
    view, got = memoryview(data), 0
    while got < len(data):
        n = response.readinto(view[got:])
        if not n:
            raise http.client.IncompleteRead(bytes(view[:got]), len(data) - got)
        got += n
    return data


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
            self._host, self._port = parts.hostname, parts.port
            self._where = url
        else:
            self._where = f"unix:{unix_socket}"
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the active model on `inputs` (keyed by input name); outputs keyed by name."""
        data = self._call(
            "POST",
            "/v1/predict",
            codec.encode_npz(inputs),
            {"Content-Type": codec.NPZ, "Accept": codec.NPZ},
        )
        try:
            return codec.decode_npz(data, max_bytes=None)
        except RequestError as exc:
            raise LocalServerError(
                f"the answer from {self._where} is not a readable .npz: {exc}", status=200
            ) from exc

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the agent is ready to serve, and its health body."""
        status, data = self._request("GET", "/v1/health", None, {})
        if status not in (200, 503):
            self._raise(status, data)
        body: dict[str, Any] = json.loads(data)
        return status == 200, body

    def model(self) -> dict[str, Any]:
        """The active model's description; `LocalServerError` (503) when there is none."""
        info: dict[str, Any] = json.loads(self._call("GET", "/v1/model", None, {}))
        return info

    def metrics(self) -> str:
        """The agent's and the server's metrics, as Prometheus text."""
        return self._call("GET", "/metrics", None, {}).decode()

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

    def _call(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> bytearray:
        status, data = self._request(method, path, body, headers)
        if status != 200:
            self._raise(status, data)
        return data

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytearray]:
        with self._lock:
            for attempt in range(2):
                reused = self._conn is not None
                conn = self._connection()
                try:
                    conn.request(method, path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = _read(response)
                except _RETRYABLE as exc:
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
                except http.client.HTTPException as exc:
                    self._drop()
                    raise LocalServerError(
                        f"the local server at {self._where} sent a broken answer: {exc!r}",
                        status=None,
                    ) from exc
                if response.will_close:
                    self._drop()
                return response.status, data
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._unix is not None:
                self._conn = _UnixConnection(self._unix, self._timeout)
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
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

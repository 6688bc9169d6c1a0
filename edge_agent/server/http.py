"""The agent's local inference server: HTTP/1.1 for other processes on the device.

It listens on loopback TCP, a Unix socket, or both, with keep-alive and one
thread per connection, up to `max_connections` of them: past it, a connection
is answered 503 at once (by a short-lived thread of its own, as many again at
most; beyond those it is closed unanswered) and the connections being served
go on. Routes:

==========================  ====================================================
``POST /v1/predict``        inputs as JSON, ``.npz`` or ``.npy``; outputs as JSON or
                            ``.npz`` (the request's kind, or what `Accept` names)
``GET /v1/health``          200 when ready, 503 when not, with the agent's body
``GET /v1/model``           the active model's description (503 when none)
``GET /metrics``            the agent's and the server's Prometheus metrics
==========================  ====================================================

Errors are JSON ``{"error": code, "detail": message}`` (``problems.problem_for``
maps each to its status). The server holds no model: it calls a `PredictService`.

>>> with LocalServer(service, port=0) as server:
...     LocalClient(server.url).predict({"x": x})["y"]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import stat
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from edge_agent.errors import AgentError
from edge_agent.server.handler import Context, Handler, UnixHandler
from edge_agent.server.memory import return_large_allocations
from edge_agent.server.metrics import HttpMetrics
from edge_agent.server.problems import TooManyConnectionsError, problem_for
from edge_agent.server.service import PredictService

__all__ = ["DEFAULT_PORT", "LocalServer"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8470
_MiB = 1 << 20
_POLL_SECONDS = 0.1  # how soon stop() is noticed by the accepting threads
_REFUSE_SECONDS = 0.5  # how long a refused connection's request is waited for, then drained
_REFUSE_READ = 1 << 16  # read (and dropped) at a time from a refused connection


class _Server(socketserver.ThreadingTCPServer):
    """Accepts connections; one daemon thread each, tracked so `stop()` can end them."""

    daemon_threads = True
    block_on_close = True  # server_close() joins the connection threads
    allow_reuse_address = True

    def __init__(
        self,
        address: Any,
        context: Context,
        *,
        family: socket.AddressFamily,
        handler: type[Handler],
        max_connections: int,
    ) -> None:
        self.address_family = family
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        self._max = max_connections
        self._refusing = 0
        self._metrics = context.metrics
        bound = type(handler.__name__, (handler,), {"context": context})
        super().__init__(address, bound)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._live_lock:
            admitted = len(self._live) < self._max
            if admitted:
                self._live.add(request)
            else:
                refuse = self._refusing < self._max
                self._refusing += refuse
        if admitted:
            super().process_request(request, client_address)
            return
        self._metrics.refused()
        if not refuse:  # a flood: close without a word rather than grow without bound
            self.close_request(request)
            return
        threading.Thread(
            target=self._refuse, args=(request,), name="edgefleet-http-refuse", daemon=True
        ).start()

    def _refuse(self, sock: socket.socket) -> None:
        """Answer 503 to a connection past the limit, then close it without resetting it."""
        found = problem_for(
            TooManyConnectionsError(
                f"the local server is serving {self._max} connections, its limit "
                "(server.max_connections); retry in a moment, or keep one connection alive"
            )
        )
        assert found is not None
        status, document = found
        body = json.dumps(document).encode()
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            deadline = time.monotonic() + _REFUSE_SECONDS
            sock.settimeout(_REFUSE_SECONDS)
            # the request, read and dropped first: closing on unread bytes would reset the
            # connection and the client might never see the answer
            if sock.recv(_REFUSE_READ):
                sock.sendall(head.encode() + body)
                sock.shutdown(socket.SHUT_WR)
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    if not sock.recv(_REFUSE_READ):
                        break
        except OSError:
            pass
        finally:
            self.close_request(sock)
            with self._live_lock:
                self._refusing -= 1

    def shutdown_request(self, request: Any) -> None:
        with self._live_lock:
            self._live.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake every connection thread (idle keep-alives included) so it ends."""
        with self._live_lock:
            live = list(self._live)
        for sock in live:
            with contextlib.suppress(OSError):  # already closed by its thread
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            logger.debug("local server: connection ended: %s", exc)
        else:
            logger.error("local server: unexpected error on a connection", exc_info=exc)


class _UnixServer(_Server):
    def __init__(self, path: Path, context: Context, *, max_connections: int) -> None:
        self.path = path
        self.inode: int | None = None
        super().__init__(
            str(path),
            context,
            family=socket.AF_UNIX,
            handler=UnixHandler,
            max_connections=max_connections,
        )

    def server_bind(self) -> None:
        _clear_stale_socket(self.path)
        self.socket.bind(str(self.path))
        # before listen(): no one can connect while the mode is still the umask's
        os.chmod(self.path, 0o660)
        self.inode = os.stat(self.path).st_ino

    def remove_socket_file(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self.inode:  # not a successor's socket
                self.path.unlink()


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file that no process listens on (left by a crash)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AgentError(f"{path} exists and is not a socket; remove it or choose another path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            logger.info("local server: replacing the stale socket %s", path)
            path.unlink(missing_ok=True)
            return
        except OSError as exc:
            raise AgentError(f"cannot check the socket {path}: {exc}") from exc
    raise AgentError(f"another process is serving on {path}; stop it or choose another socket path")


class LocalServer:
    """The local inference server, on loopback TCP and/or a Unix socket.

    `port=0` picks a free port (see `address` / `url`); `port=None` serves the
    Unix socket only. The socket file is created with mode 0660, replaces a
    stale one left by a crash, and is removed by `stop()`. Bodies over
    `max_body_bytes` are refused with 413 (from their declared length, before
    they are read); a request whose head and body take longer than
    `request_timeout_s` to arrive gets 408; past `max_connections` open
    connections on a listener, a new one gets 503.

    >>> with LocalServer(service, port=0, unix_socket=Path("/run/edgefleet/agent.sock")) as s:
    ...     print(s.url)
    """

    def __init__(
        self,
        service: PredictService,
        *,
        host: str = "127.0.0.1",
        port: int | None = DEFAULT_PORT,
        unix_socket: Path | None = None,
        max_body_bytes: int = 64 * _MiB,
        max_connections: int = 64,
        request_timeout_s: float = 30.0,
    ) -> None:
        if port is None and unix_socket is None:
            raise ValueError("LocalServer needs a TCP port or a unix_socket to listen on")
        if max_connections < 1 or request_timeout_s <= 0:
            raise ValueError("max_connections must be at least 1 and request_timeout_s positive")
        self._context = Context(service, max_body_bytes, HttpMetrics(), request_timeout_s)
        self._max_connections = max_connections
        self._host, self._port, self._path = host, port, unix_socket
        self._tcp: _Server | None = None
        self._unix: _UnixServer | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Bind and listen, then serve from background threads. Raises `AgentError`."""
        with self._lock:
            if self._threads:
                raise RuntimeError("the local server is already running")
            return_large_allocations()  # a large request's memory is returned once it is done
            try:
                if self._port is not None:
                    self._tcp = self._bind_tcp(self._port)
                if self._path is not None:
                    self._unix = self._bind_unix(self._path)
            except BaseException:
                self._close_servers()
                raise
            for server in self._servers():
                thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": _POLL_SECONDS},
                    name=f"edgefleet-http-{'unix' if server is self._unix else 'tcp'}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
        logger.info("local inference server listening on %s", self._where())

    def stop(self) -> None:
        """Stop accepting, end open connections, wait for their threads, remove the socket."""
        with self._lock:
            # shutdown() waits for the accept loop to notice; let the loops notice together
            stoppers = [threading.Thread(target=s.shutdown) for s in self._servers()]
            for thread in stoppers:
                thread.start()
            for thread in stoppers + self._threads:
                thread.join()
            self._threads = []
            self._close_servers()

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound TCP (host, port) while running; None without TCP."""
        if self._tcp is None:
            return None
        host, port = self._tcp.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str | None:
        """``http://host:port`` of the TCP listener while running, for `LocalClient`."""
        if (address := self.address) is None:
            return None
        host, port = address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def unix_socket(self) -> Path | None:
        """The Unix socket's path, if the server listens on one."""
        return self._path

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind_tcp(self, port: int) -> _Server:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            return _Server(
                (self._host, port),
                self._context,
                family=family,
                handler=Handler,
                max_connections=self._max_connections,
            )
        except OSError as exc:
            raise AgentError(
                f"the local server cannot listen on {self._host}:{port}: {exc.strerror or exc} "
                "(another agent may hold the port; choose another, or 0 for a free one)"
            ) from exc

    def _bind_unix(self, path: Path) -> _UnixServer:
        try:
            return _UnixServer(path, self._context, max_connections=self._max_connections)
        except OSError as exc:
            raise AgentError(
                f"the local server cannot listen on {path}: {exc.strerror or exc} "
                "(a Unix socket path must be short, about 100 bytes, in a writable directory)"
            ) from exc

    def _servers(self) -> list[_Server]:
        return [s for s in (self._tcp, self._unix) if s is not None]

    def _close_servers(self) -> None:
        for server in self._servers():
            server.close_connections()
            server.server_close()  # joins the connection threads
        if self._unix is not None:
            self._unix.remove_socket_file()
        self._tcp = self._unix = None

    def _where(self) -> str:
        places = [self.url] if self.url else []
        places += [f"unix:{self._path}"] if self._path else []
        return " and ".join(places)

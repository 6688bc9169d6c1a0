"""One connection to the local server: HTTP/1.1 requests in, answers out, until it closes.

The routes are thin: parse the body, call the `PredictService`, encode the
answer. Every failure becomes a JSON answer through `problems.problem_for`.

Request heads are parsed here rather than by `http.client.parse_headers`,
which runs the e-mail parser (some 40 us a request, a tenth of the latency
budget); what it would reject is rejected here too (over-long lines, too many
fields, folded lines, conflicting lengths).

What a connection may hold is bounded: its head (`_MAX_HEAD` bytes), its body
(the server's limit, refused with 413 from the declared length before a byte
of it is read, and read in chunks into a buffer that grows only with what has
arrived), and its time: from the first byte of a request to the last of its
body, `Context.request_timeout_s`, checked before every read from the socket,
so a client trickling a byte at a time gets 408 when it runs out, not a thread
for as long as it likes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np

from edge_agent.bundle import TensorSpec
from edge_agent.server import codec
from edge_agent.server.metrics import HttpMetrics
from edge_agent.server.problems import (
    BodyTooLargeError,
    LengthRequiredError,
    MalformedBodyError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
    problem_for,
)
from edge_agent.server.service import PredictService

__all__ = ["Context", "Handler", "UnixHandler"]

logger = logging.getLogger(__name__)

_IDLE_SECONDS = 60.0  # an idle keep-alive connection is closed after this; clients reconnect
_LINGER_SECONDS = 2.0  # how long an unread body is drained before closing (see _drain)
_MAX_LINE = 65536
_MAX_FIELDS = 100
_MAX_HEAD = 1 << 17  # the header lines of one request together
_CHUNK = 1 << 18  # a body is read this much at a time, at most
_BUFFER = 1 << 16  # a connection's read buffer: a small request's head and body in one read
_STREAMED_JSON = 1 << 16  # outputs of more values than this are answered in chunks (JSON)
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

_Reply = tuple[int, str, bytes]


@dataclass(frozen=True, slots=True)
class Context:
    """What every connection of one server shares."""

    service: PredictService
    max_body_bytes: int
    metrics: HttpMetrics
    request_timeout_s: float = 30.0


class _DeadlineReader(io.RawIOBase):
    """The socket as the request's reader: past `deadline`, a read is a `TimeoutError`.

    Each read waits at most until the deadline, so a request that trickles in
    cannot outlive it however often a byte arrives (a socket timeout alone is
    renewed by every byte).
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline: float | None = None  # None: between requests (the idle timeout holds)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the time per request ran out")
            self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    """Serves one TCP connection; the server sets `context` on its subclass."""

    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "edgefleet-agent"
    disable_nagle_algorithm = True
    wbufsize = -1  # buffered: status line, fields and a small body leave in one send
    timeout = _IDLE_SECONDS

    context: Context
    raw_requestline: bytes
    fields: dict[str, str]  # the request's header fields, names in lower case
    _body_read: bool
    _streamed: Iterator[bytes] | None = None  # a large JSON answer, written in chunks
    _date: tuple[int, str] = (0, "")

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket stays open; it is read through the deadline reader
        self._reader = _DeadlineReader(self.connection)
        self._buffered = io.BufferedReader(self._reader, _BUFFER)
        self.rfile = self._buffered
        self._linger = False
        self.context.metrics.connection(+1)

    def handle_one_request(self) -> None:
        """Wait (idle timeout) for a request's first byte; from it on, the request's deadline."""
        reader = self._reader
        reader.deadline = None
        self.close_connection = True
        try:
            self.connection.settimeout(self.timeout)
            if not self._buffered.peek(1):
                return  # the client closed the connection
        except OSError:  # idle past the timeout, or reset: nothing to answer
            return
        reader.deadline = time.monotonic() + self.context.request_timeout_s
        self.fields, self.command, self.requestline = {}, "", ""
        self.request_version = self.protocol_version  # until the request line says otherwise
        try:
            self.raw_requestline = self.rfile.readline(_MAX_LINE + 1)
            if len(self.raw_requestline) > _MAX_LINE:
                self.request_version = self.protocol_version
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, "the request line is too long")
                return
            if not self.parse_request():
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(
                    HTTPStatus.NOT_IMPLEMENTED, f"unsupported method {self.command[:20]!r}"
                )
                return
            method()
            self.wfile.flush()
        except TimeoutError:
            if reader.deadline is None:  # the answer was being written: nothing more to say
                self.close_connection = True
                return
            reader.deadline = None
            with contextlib.suppress(OSError):  # the answer gets its own time, as any answer
                self.connection.settimeout(self.context.request_timeout_s)
            self.send_error(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request's head did not arrive within {self.context.request_timeout_s:g} s "
                "(server.request_timeout_s)",
            )
            with contextlib.suppress(OSError):
                self.wfile.flush()

    def finish(self) -> None:
        try:
            super().finish()  # flushes the last answer
            if self._linger:
                self._drain()
        finally:
            self.context.metrics.connection(-1)

    def _drain(self) -> None:
        """Close after an answer sent before the request's body was read, without losing it.

        A client writes its whole body before it reads the answer: closing at once
        would reset the connection under it and it would never see the 413 or 400.
        So stop sending, and read and drop what still comes, for a little while.
        """
        sock = self.connection
        deadline = time.monotonic() + _LINGER_SECONDS
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(1 << 16):
                    break

    def _dispatch(self) -> None:
        start = time.perf_counter()
        path = self.path.partition("?")[0]
        methods = _ROUTES.get(path)
        self._body_read = False
        headers: Iterable[tuple[str, str]] = ()
        try:
            if methods is None:
                raise NotFoundError(f"no route {path!r}; this server answers {_LISTING}")
            action = methods.get("GET" if self.command == "HEAD" else self.command)
            if action is None:
                allow = [*methods, "HEAD"] if "GET" in methods else list(methods)
                raise MethodNotAllowedError(
                    f"{path} does not take {self.command}; use {', '.join(allow)}", allow=allow
                )
            status, content_type, body = action(self)
        except Exception as exc:  # every failure becomes an answer; see problems.py
            status, content_type, body, headers = self._problem(exc, path)
        self._reply(status, content_type, body, headers)
        route = path if methods is not None else "other"  # unknown paths never become labels
        self.context.metrics.observe(route, status, time.perf_counter() - start)

    # BaseHTTPRequestHandler looks these names up; unknown methods get its 501
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch  # noqa: N815

    def _problem(self, exc: Exception, path: str) -> tuple[int, str, bytes, list[tuple[str, str]]]:
        found = problem_for(exc)
        if found is None:
            logger.exception("local server: %s %s failed", self.command, path)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            body: dict[str, Any] = {
                "error": "internal_error",
                "detail": f"{type(exc).__name__}: {exc} (a bug in the agent; its log has more)",
            }
        else:
            status, body = found
            logger.debug("local server: %s %s -> %d %s", self.command, path, status, exc)
        has_body = (
            self.fields.get("content-length", "0") != "0" or "transfer-encoding" in self.fields
        )
        if has_body and not self._body_read:
            self.close_connection = True  # the unread body would be taken for the next request
            self._linger = True
        headers = []
        if isinstance(exc, MethodNotAllowedError):
            headers.append(("Allow", ", ".join(exc.allow)))
        return int(status), codec.JSON, json.dumps(body).encode(), headers

    def _reply(
        self, status: int, content_type: str, body: bytes, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        if self._reader.deadline is not None:  # the request is in; the answer has its own time
            self._reader.deadline = None
            self.connection.settimeout(self.context.request_timeout_s)
        streamed, self._streamed = self._streamed, None
        if streamed is not None and self.request_version == "HTTP/1.0":
            body, streamed = b"".join(streamed), None  # no chunked encoding in HTTP/1.0
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if streamed is None:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        elif self.request_version == "HTTP/1.0":
            self.send_header("Connection", "keep-alive")
        self.end_headers()
        if self.command == "HEAD":
            return
        if streamed is None:
            self.wfile.write(body)
            return
        write = self.wfile.write
        for piece in streamed:
            if piece:
                write(b"%x\r\n%s\r\n" % (len(piece), piece))
        write(b"0\r\n\r\n")

    def _body_length(self) -> int:
        """The declared length of the body, checked against the limit before any is read."""
        if "transfer-encoding" in self.fields:
            raise LengthRequiredError(
                "chunked request bodies are not accepted; send a Content-Length"
            )
        raw = self.fields.get("content-length")
        if raw is None:
            raise LengthRequiredError("a POST needs a Content-Length header")
        length, limit = int(raw), self.context.max_body_bytes  # checked by parse_request
        if length > limit:
            raise BodyTooLargeError(
                f"the body is {length} bytes; this server takes at most {limit} "
                "(send smaller batches)"
            )
        return length

    def _body_chunks(self, length: int) -> Iterator[bytes]:
        """The body as it arrives, at most `_CHUNK` bytes at a time, within the deadline.

        Nothing is allocated from the declared length: a client may declare 64 MiB
        and send a byte.
        """
        read, got = self.rfile.read1, 0
        try:
            while (left := length - got) > 0 and (chunk := read(min(left, _CHUNK))):
                got += len(chunk)
                yield chunk
        except TimeoutError:
            self.close_connection = True
            raise RequestTimeoutError(
                f"the body did not arrive within {self.context.request_timeout_s:g} s "
                f"(server.request_timeout_s): {got} of {length} bytes came"
            ) from None
        self._body_read = True
        if got != length:
            self.close_connection = True
            raise MalformedBodyError(f"the body ended after {got} of {length} bytes")

    def _read_body(self) -> bytearray:
        length = self._body_length()
        # a bytearray, so the arrays read from it are writable views, not copies
        body = bytearray()
        for chunk in self._body_chunks(length):
            body += chunk
        return body

    def _read_json(self, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
        """A JSON body decoded as it arrives: its arrays are held, never the body itself."""
        decoder = codec.json_decoder(specs)
        chunks = self._body_chunks(self._body_length())
        for chunk in chunks:
            decoder.feed(chunk)
        return decoder.close()

    # -- routes: parse, call the service, answer --------------------------------------------

    def _predict(self) -> _Reply:
        service = self.context.service
        kind = codec.media_type(self.fields.get("content-type"))
        if kind not in codec.READABLE:
            raise UnsupportedMediaTypeError(
                f"Content-Type {kind or '(none)'!r} is not accepted; "
                f"send one of {', '.join(codec.READABLE)}"
            )
        inputs: dict[str, np.ndarray]
        if kind == codec.JSON:
            inputs = self._read_json(service.input_specs())
        elif kind == codec.NPZ:
            inputs = codec.decode_npz(self._read_body(), max_bytes=self.context.max_body_bytes)
        else:
            body = self._read_body()
            inputs = codec.decode_npy(body, [s.name for s in service.input_specs()])
        outputs = service.predict(inputs)
        if codec.reply_type(kind, self.fields.get("accept")) == codec.NPZ:
            return HTTPStatus.OK, codec.NPZ, codec.encode_npz(outputs)
        model = _model_of(service.model_info())
        if sum(o.size for o in outputs.values()) > _STREAMED_JSON:
            self._streamed = codec.encode_json_chunks(outputs, model)
            return HTTPStatus.OK, codec.JSON, b""
        return HTTPStatus.OK, codec.JSON, codec.encode_json(outputs, model)

    def _health(self) -> _Reply:
        ready, body = self.context.service.health()
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        return status, codec.JSON, json.dumps(body).encode()

    def _model(self) -> _Reply:
        return HTTPStatus.OK, codec.JSON, json.dumps(self.context.service.model_info()).encode()

    def _metrics(self) -> _Reply:
        agent = self.context.service.metrics()
        if agent and not agent.endswith("\n"):
            agent += "\n"
        return HTTPStatus.OK, _PROMETHEUS, (agent + self.context.metrics.render()).encode()

    # -- BaseHTTPRequestHandler's own parts, made leaner or quieter --------------------------

    def parse_request(self) -> bool:
        """Parse the request line and header fields; answer 4xx/5xx and return False if bad."""
        self.command = ""  # until the request line is known good
        self.request_version = self.protocol_version  # so that errors have a status line
        self.fields = {}
        self.close_connection = True
        self.requestline = line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = line.split()
        if not words:
            return False
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self.send_error(HTTPStatus.BAD_REQUEST, f"bad request line {line[:200]!r}")
            return False
        command, path, version = words
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            self.send_error(
                HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"{version[:20]!r}: speak HTTP/1.1"
            )
            return False
        self.command, self.path, self.request_version = command, path, version
        fields = self.fields
        head = 0
        for _ in range(_MAX_FIELDS + 1):
            raw = self.rfile.readline(_MAX_LINE + 1)
            if raw in (b"\r\n", b"\n", b""):
                break
            head += len(raw)
            if len(raw) > _MAX_LINE or head > _MAX_HEAD:
                self.send_error(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "a header line is too long"
                )
                return False
            name, colon, value = str(raw, "iso-8859-1").partition(":")
            name = name.lower()
            if not colon or not name or name != name.strip():  # no folding, no space before ":"
                self.send_error(HTTPStatus.BAD_REQUEST, f"malformed header line {raw[:100]!r}")
                return False
            value = value.strip()
            if name in fields:
                if name == "content-length" and value != fields[name]:
                    self.send_error(HTTPStatus.BAD_REQUEST, "conflicting Content-Length fields")
                    return False
                value = f"{fields[name]}, {value}" if name != "content-length" else value
            fields[name] = value
        else:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields")
            return False
        length = fields.get("content-length")
        if length is not None and not (length.isascii() and length.isdigit()):
            self.send_error(
                HTTPStatus.BAD_REQUEST, f"Content-Length {length[:40]!r} is not a number"
            )
            return False
        connection = fields.get("connection", "").lower()
        if version == "HTTP/1.1":
            self.close_connection = "close" in connection
        else:
            self.close_connection = "keep-alive" not in connection
        if fields.get("expect", "").lower() == "100-continue" and version == "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def handle_expect_100(self) -> bool:
        """Tell a client waiting on ``Expect: 100-continue`` to send its body, now."""
        super().handle_expect_100()
        self.wfile.flush()  # the writer is buffered
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests and unknown methods: a JSON answer, then close."""
        self.close_connection = self._linger = True
        if not hasattr(self, "fields"):
            self.fields = {}
        status = HTTPStatus(code)
        body = {"error": status.phrase.lower().replace(" ", "_"), "detail": message or explain}
        self._reply(code, codec.JSON, json.dumps(body).encode())

    def version_string(self) -> str:
        """The Server field: no Python version for every local process to read."""
        return self.server_version

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date field, formatted once a second rather than on every answer."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, super().date_time_string(now))
        return self._date[1]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("local server: %r -> %s", self.requestline, code)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("local server: " + format, *args)


def _model_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """The name and version of the active model, from `PredictService.model_info`."""
    if "name" in info:
        return {"name": info["name"], "version": info.get("version")}
    ref = info.get("bundle")  # an `edge_agent.protocol.BundleRef`, as the agent's Serving gives
    if isinstance(ref, Mapping):
        return {"name": ref.get("model"), "version": ref.get("version")}
    return {"name": None, "version": None}


class UnixHandler(Handler):
    """Serves one Unix-socket connection."""

    disable_nagle_algorithm = False  # TCP_NODELAY does not exist on a Unix socket


_ROUTES: dict[str, dict[str, Callable[[Handler], _Reply]]] = {
    "/v1/predict": {"POST": Handler._predict},
    "/v1/health": {"GET": Handler._health},
    "/v1/model": {"GET": Handler._model},
    "/metrics": {"GET": Handler._metrics},
}
_LISTING = ", ".join(f"{m} {path}" for path, methods in _ROUTES.items() for m in methods)

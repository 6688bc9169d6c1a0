"""Real HTTP file servers for bundle downloads in tests (the fleet's role): a plain one, and a
paced one that resumes with Range and can trickle a byte every two seconds."""

from __future__ import annotations

import functools
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class FileServer:
    """Serves the files of `root` at http://127.0.0.1:<port>/<name>."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(_Quiet, directory=str(root))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class _Ranged(BaseHTTPRequestHandler):
    """GET with Range/If-Range and a strong ETag, paced as the owning `PacedFileServer` says."""

    protocol_version = "HTTP/1.1"
    server: _PacedHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        name = self.path.split("?", 1)[0].lstrip("/")
        owner.record(self.path, self.headers.get("Range"))
        path = owner.root / name
        if name in owner.forbidden:  # an expired signed link, as the fleet answers it
            self.send_error(403, "the download URL expired")
            return
        if "/" in name or not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        start = 0
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes=") and self.headers.get("If-Range", etag) == etag:
            start = int(wanted[6:].split("-", 1)[0] or 0)
        if start >= len(body) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("ETag", etag)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk, pause = owner.pace(name)
        for offset in range(start, len(body), chunk):
            if owner.closed.is_set():
                return
            self.wfile.write(body[offset : offset + chunk])
            self.wfile.flush()
            if pause:
                owner.closed.wait(pause)


class _PacedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: PacedFileServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-body is what these tests do


class PacedFileServer:
    """Serves `root` with Range/If-Range (resumable), `chunk` bytes every `pause_s` seconds.

    ``trickle(name)`` makes one file crawl at 1 byte every 2 s (a server that keeps a
    download alive for hours); `requests` lists every (path, Range header) received.
    """

    def __init__(self, root: Path, *, chunk: int = 64 * 1024, pause_s: float = 0.0) -> None:
        self.root = root
        self.chunk, self.pause_s = chunk, pause_s
        self.slow: dict[str, tuple[int, float]] = {}
        self.forbidden: set[str] = set()  # names answered 403, as an expired link is
        self.requests: list[tuple[str, str | None]] = []
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._server = _PacedHTTPServer(("127.0.0.1", 0), _Ranged)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def trickle(self, name: str, *, chunk: int = 1, pause_s: float = 2.0) -> None:
        self.slow[name] = (chunk, pause_s)

    def pace(self, name: str) -> tuple[int, float]:
        return self.slow.get(name, (self.chunk, self.pause_s))

    def record(self, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((path, range_header))

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> PacedFileServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

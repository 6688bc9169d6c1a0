"""The bundle download against a real local HTTP server that misbehaves on demand."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import DownloadError
from edge_agent.swap.download import DownloadPolicy, download

CONTENT = random.Random(7).randbytes(300_000)
DIGEST = hashlib.sha256(CONTENT).hexdigest()
FAST = DownloadPolicy(connect_timeout_s=5, read_timeout_s=5, attempts=4)


@dataclass
class Fleet:
    """What the test server serves, what it saw, and how it misbehaves."""

    port: int = 0
    scheme: str = "http"
    content: bytes = CONTENT
    etag: str = '"v1"'
    requests: list[dict[str, str]] = field(default_factory=list)  # lowercased headers + path
    sent: list[int] = field(default_factory=list)  # body bytes written, per response
    statuses: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # answered first
    drop_after: list[int] = field(default_factory=list)  # cut the next bodies after N bytes
    ignore_range: bool = False  # answer 200 with the whole file
    honour_if_range: bool = True
    range_skew: int = 0  # a Content-Range (and body) that starts this far off
    content_length: bool = True  # False: no Content-Length, the body ends when we close
    stall_after: list[int] = field(default_factory=list)  # the next bodies stop after N bytes
    released: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = "/bundles/b.efb?token=s3cret", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def publish(self, content: bytes, etag: str) -> None:
        self.content, self.etag = content, etag


class FleetServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler: no thread outlives a test
    block_on_close = True

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.fleet = fleet
        fleet.port = self.server_address[1]
        self.errors: list[BaseException] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, ConnectionError):  # a hang-up is fine
            self.errors.append(error)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FleetServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        fleet = self.server.fleet
        headers = {k.lower(): v for k, v in self.headers.items()}
        fleet.requests.append({"path": self.path, **headers})
        if fleet.statuses:
            status, extra = fleet.statuses.pop(0)
            self.send_response(status)
            for name, value in {**extra, "Content-Length": "0"}.items():
                self.send_header(name, value)
            self.end_headers()
            return
        body, start = fleet.content, self.range_start(fleet)
        if start is not None and start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200 if start is None else 206)
        self.send_header("ETag", fleet.etag)
        if start is not None:
            start -= fleet.range_skew
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        payload = body[start or 0 :]
        if fleet.content_length:
            self.send_header("Content-Length", str(len(payload)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if fleet.stall_after:
            sent = fleet.stall_after.pop(0)
            self.wfile.write(payload[:sent])
            fleet.sent.append(sent)
            fleet.released.wait(30)  # until the test ends
            self.close_connection = True
            return
        if fleet.drop_after:
            payload = payload[: fleet.drop_after.pop(0)]
            self.close_connection = True
        fleet.sent.append(len(payload))
        try:
            self.wfile.write(payload)
        except OSError:  # the client hung up (over the cap, cancelled): expected
            self.close_connection = True

    def range_start(self, fleet: Fleet) -> int | None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match is None or fleet.ignore_range:
            return None
        if_range = self.headers.get("If-Range")
        if fleet.honour_if_range and if_range is not None and if_range != fleet.etag:
            return None
        return int(match[1])


def serve(fleet: Fleet, tls: ssl.SSLContext | None = None) -> Iterator[Fleet]:
    server = FleetServer(fleet)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        fleet.scheme = "https"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    yield fleet
    fleet.released.set()
    server.shutdown()
    server.server_close()
    thread.join()
    assert server.errors == []


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    yield from serve(Fleet())


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "downloads" / f"{DIGEST}.efb"


def fetch(fleet: Fleet, dest: Path, sleeps: list[float], **kwargs: Any) -> Path:
    """`download` from the fleet, expecting CONTENT unless told otherwise; sleeps recorded."""
    kwargs = {"size": len(CONTENT), "sha256": DIGEST, "policy": FAST, **kwargs}
    return download(fleet.url(), dest, sleep=sleeps.append, **kwargs)


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p != dest)


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_full_download_checks_the_hash_and_leaves_only_the_file(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    seen: list[tuple[int, int | None]] = []
    assert fetch(fleet, dest, sleeps, progress=lambda n, total: seen.append((n, total))) == dest
    assert dest.read_bytes() == CONTENT
    assert leftovers(dest) == []
    assert seen[-1] == (len(CONTENT), len(CONTENT))
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)
    assert "range" not in fleet.requests[0]
    assert fleet.requests[0]["accept-encoding"] == "identity"
    assert sleeps == []


def test_a_part_left_by_a_crash_is_resumed_with_range(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    dest.parent.mkdir()
    part_of(dest).write_bytes(CONTENT[:123_456])
    fetch(fleet, dest, sleeps)
    assert dest.read_bytes() == CONTENT
    assert [r.get("range") for r in fleet.requests] == ["bytes=123456-"]
    assert fleet.sent == [len(CONTENT) - 123_456]
    assert leftovers(dest) == []


def test_a_damaged_part_is_reported_and_fetched_again_from_byte_0(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    """Zeroed by the flash: resumed, found wrong by the digest, reported, fetched again."""
    dest.parent.mkdir()
    part_of(dest).write_bytes(b"\0" * 123_456)
    damaged: list[tuple[str, str]] = []
    fetch(fleet, dest, sleeps, damaged=lambda path, why: damaged.append((path.name, why)))
    assert dest.read_bytes() == CONTENT
    assert damaged == [
        (part_of(dest).name, "resumed, but the whole file is not the announced sha256")
    ]
    assert [r.get("range") for r in fleet.requests] == ["bytes=123456-", None]
    assert leftovers(dest) == []


@pytest.mark.parametrize("meta", [b"", b'{"url": "htt', b"\xff\xfe\0garbage", b"[1, 2]"])
def test_a_damaged_part_meta_is_reported_and_the_file_fetched_from_byte_0(
    fleet: Fleet, dest: Path, sleeps: list[float], meta: bytes
) -> None:
    dest.parent.mkdir()
    part_of(dest).write_bytes(CONTENT[:123_456])
    part_of(dest).with_name(part_of(dest).name + ".meta").write_bytes(meta)
    damaged: list[str] = []
    fetch(fleet, dest, sleeps, damaged=lambda path, why: damaged.append(path.name))
    assert dest.read_bytes() == CONTENT
    assert damaged == [part_of(dest).name + ".meta"]
    assert [r.get("range") for r in fleet.requests] == [None]
    assert leftovers(dest) == []


def test_a_complete_part_left_before_the_rename_is_finished_without_the_network(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    dest.parent.mkdir()
    part_of(dest).write_bytes(CONTENT)
    fetch(fleet, dest, sleeps)
    assert dest.read_bytes() == CONTENT
    assert fleet.requests == []


AGENT = """
import sys
from pathlib import Path
from edge_agent.swap.download import download
url, dest, size, digest = sys.argv[1:]
download(url, Path(dest), size=int(size), sha256=digest,
         progress=lambda n, _: print(n, flush=True))
"""


def test_an_agent_killed_mid_download_leaves_a_part_the_next_run_resumes(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    fleet.stall_after = [100_000]
    args = [fleet.url(), str(dest), str(len(CONTENT)), DIGEST]
    with subprocess.Popen(
        [sys.executable, "-c", AGENT, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ) as agent:
        assert agent.stdout is not None
        for line in agent.stdout:  # the agent has written all it was sent
            if int(line) == 100_000:
                break
        os.kill(agent.pid, signal.SIGKILL)
        agent.communicate()
    assert not dest.exists()
    assert part_of(dest).read_bytes() == CONTENT[:100_000]

    fetch(fleet, dest, sleeps)
    assert dest.read_bytes() == CONTENT
    assert (fleet.requests[1]["range"], fleet.requests[1]["if-range"]) == ("bytes=100000-", '"v1"')
    assert fleet.sent == [100_000, len(CONTENT) - 100_000]
    assert leftovers(dest) == []


def test_cancelled_keeps_the_part_and_the_next_call_resumes_it_with_if_range(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    seen: list[int] = []
    with pytest.raises(DownloadError) as caught:
        fetch(fleet, dest, sleeps, progress=lambda n, _: seen.append(n), cancelled=lambda: seen)
    assert caught.value.reason == "cancelled"
    assert "kept" in str(caught.value)
    assert not dest.exists()
    kept = part_of(dest).stat().st_size
    assert kept == seen[-1] > 0

    fetch(fleet, dest, sleeps, cancelled=lambda: False)
    assert dest.read_bytes() == CONTENT
    second = fleet.requests[1]
    assert (second["range"], second["if-range"]) == (f"bytes={kept}-", '"v1"')
    assert fleet.sent[1] == len(CONTENT) - kept
    assert leftovers(dest) == []


def test_cancelled_before_the_first_request_sends_nothing(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    with pytest.raises(DownloadError, match="cancelled") as caught:
        fetch(fleet, dest, sleeps, cancelled=lambda: True)
    assert caught.value.reason == "cancelled"
    assert fleet.requests == []


def test_a_body_cut_twice_is_resumed_and_only_the_rest_is_sent(
    fleet: Fleet, dest: Path, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    fleet.drop_after = [100_000, 50_000]
    with caplog.at_level(logging.INFO, logger="edge_agent.swap.download"):
        fetch(fleet, dest, sleeps)
    assert dest.read_bytes() == CONTENT
    assert [r.get("range") for r in fleet.requests] == [None, "bytes=100000-", "bytes=150000-"]
    assert sum(fleet.sent) == len(CONTENT)
    assert len(sleeps) == 2
    log = caplog.text
    assert "attempt 3/4 from byte 150000" in log
    assert "attempt 2/4 failed" in log
    assert "retry in" in log
    assert "s3cret" not in log


def test_a_server_that_ignores_range_restarts_cleanly(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    dest.parent.mkdir()
    part_of(dest).write_bytes(b"\0" * 1000)  # not even the right bytes: must not survive
    fleet.ignore_range = True
    fetch(fleet, dest, sleeps)
    assert dest.read_bytes() == CONTENT
    assert fleet.requests[0]["range"] == "bytes=1000-"
    assert fleet.sent == [len(CONTENT)]


def test_a_file_changed_on_the_server_between_attempts_is_not_spliced(
    fleet: Fleet, dest: Path
) -> None:
    new = CONTENT[::-1]
    fleet.drop_after = [100_000]
    waits: list[float] = []

    def sleep(delay: float) -> None:  # the fleet republishes while the agent waits
        waits.append(delay)
        fleet.publish(new, '"v2"')

    download(
        fleet.url(),
        dest,
        size=len(new),
        sha256=hashlib.sha256(new).hexdigest(),
        policy=FAST,
        sleep=sleep,
    )
    assert dest.read_bytes() == new
    assert fleet.requests[1]["if-range"] == '"v1"'
    assert fleet.sent == [100_000, len(new)]
    assert len(waits) == 1


@pytest.mark.parametrize(
    ("misbehaviour", "part"),
    [
        ("range_skew", CONTENT[:5000]),  # a Content-Range that starts elsewhere
        ("ignores_if_range", CONTENT[:5000]),  # 206 for an old ETag, with the new one
        ("416", CONTENT + b"tail"),  # the part is longer than the file
    ],
)
def test_a_part_the_server_cannot_continue_is_started_over(
    fleet: Fleet, dest: Path, sleeps: list[float], misbehaviour: str, part: bytes
) -> None:
    dest.parent.mkdir()
    part_of(dest).write_bytes(part)
    if misbehaviour == "range_skew":
        fleet.range_skew = 1000
    elif misbehaviour == "ignores_if_range":
        dest.with_name(dest.name + ".part.meta").write_text(
            f'{{"url": "{fleet.url().split("?")[0]}", "sha256": "{DIGEST}", "etag": "\\"v0\\""}}'
        )
        fleet.honour_if_range = False
    fetch(fleet, dest, sleeps, size=None)
    assert dest.read_bytes() == CONTENT
    assert "range" not in fleet.requests[-1]
    assert len(fleet.requests) == 2
    assert sleeps == []  # starting over is not a failure
    assert leftovers(dest) == []


def test_server_errors_are_retried_honouring_retry_after(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    fleet.statuses = [(500, {}), (503, {"Retry-After": "7"}), (429, {"Retry-After": "3600"})]
    fetch(fleet, dest, sleeps, policy=DownloadPolicy(attempts=4, backoff_s=2, backoff_max_s=30))
    assert dest.read_bytes() == CONTENT
    assert len(fleet.requests) == 4
    assert 1 <= sleeps[0] <= 2
    assert sleeps[1:] == [7, 30]  # Retry-After as given, but capped


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (404, "the fleet no longer has this bundle"),
        (401, "credentials rejected"),
        (403, "credentials rejected"),
        (400, "not retried"),
    ],
)
def test_client_errors_are_not_retried_and_say_what_to_do(
    fleet: Fleet, dest: Path, sleeps: list[float], status: int, says: str
) -> None:
    fleet.statuses = [(status, {})]
    with pytest.raises(DownloadError) as caught:
        fetch(fleet, dest, sleeps)
    error = caught.value
    assert (error.reason, error.step) == ("http_status", "download")
    assert f"HTTP {status}" in str(error)
    assert says in str(error)
    assert f"{fleet.url().split('?')[0]}:" in str(error)
    assert "s3cret" not in str(error)
    assert len(fleet.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    ("size", "max_bytes", "cap"),
    [(None, 100_000, "the download cap"), (100_000, 10**9, "the size the fleet announced")],
)
def test_a_content_length_over_the_cap_is_refused_before_any_byte(
    fleet: Fleet,
    dest: Path,
    sleeps: list[float],
    size: int | None,
    max_bytes: int,
    cap: str,
) -> None:
    seen: list[int] = []
    with pytest.raises(DownloadError, match=f"larger than {cap}") as caught:
        fetch(
            fleet,
            dest,
            sleeps,
            size=size,
            policy=DownloadPolicy(max_bytes=max_bytes),
            progress=lambda n, _: seen.append(n),
        )
    assert caught.value.reason == "too_large"
    assert "300000 bytes" in str(caught.value)
    assert seen == []
    assert leftovers(dest) == []
    assert len(fleet.requests) == 1


def test_a_stream_without_content_length_stops_at_the_cap(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    fleet.content_length = False
    seen: list[int] = []
    with pytest.raises(DownloadError) as caught:
        fetch(
            fleet,
            dest,
            sleeps,
            size=None,
            policy=DownloadPolicy(max_bytes=100_000),
            progress=lambda n, _: seen.append(n),
        )
    assert caught.value.reason == "too_large"
    assert 0 < seen[-1] <= 100_000
    assert leftovers(dest) == []


def test_a_close_delimited_body_without_content_length_downloads(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    fleet.content_length = False
    fetch(fleet, dest, sleeps)
    assert dest.read_bytes() == CONTENT


def test_a_wrong_hash_leaves_neither_file_nor_part(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    with pytest.raises(DownloadError) as caught:
        fetch(fleet, dest, sleeps, sha256=hashlib.sha256(b"another bundle").hexdigest())
    assert caught.value.reason == "hash_mismatch"
    assert DIGEST in str(caught.value)
    assert not dest.exists()
    assert leftovers(dest) == []


def test_a_size_other_than_announced_is_refused(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    with pytest.raises(DownloadError) as caught:
        fetch(fleet, dest, sleeps, size=len(CONTENT) + 1)
    assert caught.value.reason == "size_mismatch"
    assert leftovers(dest) == []


def test_a_stalled_server_times_out_on_every_attempt(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    fleet.stall_after = [0, 0, 0]
    policy = DownloadPolicy(read_timeout_s=0.2, attempts=3)
    with pytest.raises(DownloadError) as caught:
        fetch(fleet, dest, sleeps, policy=policy)
    assert caught.value.reason == "timeout"
    assert "3 attempts" in str(caught.value)
    assert "timed out" in str(caught.value)
    assert len(fleet.requests) == 3
    assert len(sleeps) == 2


def test_a_refused_connection_backs_off_exponentially_then_gives_up(
    dest: Path, sleeps: list[float]
) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy = DownloadPolicy(attempts=6, backoff_s=1, backoff_max_s=5)
    with pytest.raises(DownloadError) as caught:
        download(
            f"http://127.0.0.1:{port}/b.efb",
            dest,
            size=None,
            sha256=None,
            policy=policy,
            sleep=sleeps.append,
        )
    assert caught.value.reason == "unreachable"
    assert "6 attempts" in str(caught.value)
    assert "connection refused" in str(caught.value)
    ceilings = [1, 2, 4, 5, 5]  # doubling, capped; jitter takes each down to half at most
    assert len(sleeps) == len(ceilings)
    for delay, ceiling in zip(sleeps, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert not dest.exists()


def test_redirects_are_followed_without_credentials_to_another_origin(
    fleet: Fleet, dest: Path, sleeps: list[float]
) -> None:
    fleet.statuses = [(302, {"Location": fleet.url("/cdn/b.efb", host="localhost")})]
    fetch(fleet, dest, sleeps, headers={"Authorization": "Bearer device-token"})
    assert dest.read_bytes() == CONTENT
    assert fleet.requests[0]["authorization"] == "Bearer device-token"
    assert fleet.requests[1]["path"] == "/cdn/b.efb"
    assert "authorization" not in fleet.requests[1]


@pytest.mark.parametrize("url", ["ftp://fleet.example/b.efb", "file:///etc/passwd", "b.efb"])
def test_urls_other_than_http_are_refused(url: str, dest: Path, sleeps: list[float]) -> None:
    with pytest.raises(DownloadError, match="only http:// and https://") as caught:
        download(url, dest, size=None, sha256=None, sleep=sleeps.append)
    assert caught.value.reason == "bad_url"
    assert not dest.parent.exists()


def test_a_redirect_to_ftp_is_refused(fleet: Fleet, dest: Path, sleeps: list[float]) -> None:
    fleet.statuses = [(301, {"Location": "ftp://fleet.example/b.efb"})]
    with pytest.raises(DownloadError, match="ftp://") as caught:
        fetch(fleet, dest, sleeps)
    assert caught.value.reason == "bad_url"


@pytest.fixture
def tls_fleet(tmp_path: Path) -> Iterator[tuple[Fleet, ssl.SSLContext]]:
    """The fleet over HTTPS with a self-signed certificate, and a client context trusting it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet test fleet")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = tmp_path / "fleet.crt"
    key_pem = tmp_path / "fleet.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert_pem, key_pem)
    client_side = ssl.create_default_context(cafile=str(cert_pem))
    for fleet in serve(Fleet(), tls=server_side):
        yield fleet, client_side


def test_https_with_the_fleet_ca_downloads(
    tls_fleet: tuple[Fleet, ssl.SSLContext], dest: Path, sleeps: list[float]
) -> None:
    fleet, context = tls_fleet
    fetch(fleet, dest, sleeps, ssl_context=context)
    assert dest.read_bytes() == CONTENT


def test_https_with_an_untrusted_certificate_fails_at_once(
    tls_fleet: tuple[Fleet, ssl.SSLContext], dest: Path, sleeps: list[float]
) -> None:
    fleet, _ = tls_fleet
    with pytest.raises(DownloadError, match="not trusted") as caught:
        fetch(fleet, dest, sleeps)  # the system CAs do not know the test certificate
    assert caught.value.reason == "tls"
    assert "device clock" in str(caught.value)
    assert sleeps == []


def test_a_directory_that_cannot_be_written_is_a_disk_error(
    fleet: Fleet, tmp_path: Path, sleeps: list[float]
) -> None:
    (tmp_path / "downloads").write_text("a file where the directory should be")
    with pytest.raises(DownloadError, match="check free space and permissions") as caught:
        fetch(fleet, tmp_path / "downloads" / "b.efb", sleeps)
    assert caught.value.reason == "disk"
    assert fleet.requests == []


def test_bad_arguments_are_programming_errors(dest: Path) -> None:
    with pytest.raises(ValueError, match="sha256"):
        download("http://x/b", dest, size=None, sha256="ABC")
    with pytest.raises(ValueError, match="Range"):
        download("http://x/b", dest, size=None, sha256=None, headers={"Range": "bytes=0-"})
    with pytest.raises(ValueError, match="attempts"):
        DownloadPolicy(attempts=0)

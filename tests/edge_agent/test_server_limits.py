"""The local server's bounded resources, on real sockets: body size, time per request,
connections; and what it answers when a client breaks the rules (never a 500)."""

from __future__ import annotations

import json
import re
import socket
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import open_bundle
from edge_agent.model import BundleModel
from edge_agent.server import LocalClient, LocalServer, LocalServerError
from tests.edge_agent.agent_env import wait_for
from tests.edge_agent.bundles import make_bundle, npz
from tests.edge_agent.test_server import ModelService

X = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)
NPZ = b"Content-Type: application/x-npz\r\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> BundleModel:
    from edge_agent.keys import write_keypair

    root = tmp_path_factory.mktemp("limits")
    write_keypair(root / "k.pem", root / "k.pub")
    return open_bundle(make_bundle(root / "tiny.efb", root / "k.pem"), trust=[root / "k.pub"])


@pytest.fixture(params=["tcp", "unix"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Limited:
    """A real server with small limits, and raw connections to it on one transport."""

    def __init__(self, server: LocalServer, transport: str) -> None:
        self.server, self.transport = server, transport

    def connect(self) -> socket.socket:
        if self.transport == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(str(self.server.unix_socket))
            return sock
        assert self.server.address is not None
        return socket.create_connection(self.server.address, timeout=10)

    def client(self) -> LocalClient:
        if self.transport == "unix":
            return LocalClient(unix_socket=self.server.unix_socket)
        assert self.server.url is not None
        return LocalClient(self.server.url)


@pytest.fixture
def limited(model: BundleModel, tmp_path: Path, transport: str) -> Iterator[Limited]:
    with LocalServer(
        ModelService(model),
        port=0 if transport == "tcp" else None,
        unix_socket=tmp_path / "agent.sock" if transport == "unix" else None,
        max_body_bytes=64 << 20,
        max_connections=3,
        request_timeout_s=0.5,
    ) as server:
        yield Limited(server, transport)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Read one answer until the server closes: (status, fields, JSON body)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, json.loads(body)


def test_a_declared_body_over_the_limit_is_a_413_before_a_byte_of_it_is_sent(
    limited: Limited,
) -> None:
    with limited.connect() as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\n" + NPZ + b"Content-Length: %d\r\n\r\n" % (1 << 40)
        )
        status, fields, body = answer(sock)  # nothing of the body was sent
    assert (status, body["error"]) == (413, "body_too_large")
    assert f"at most {64 << 20}" in body["detail"]
    assert fields["connection"] == "close"


def test_a_body_declared_large_and_sent_slowly_costs_only_what_arrived(
    limited: Limited,
) -> None:
    """64 MiB declared, 64 KiB sent: the server's allocations stay near what arrived."""
    tracemalloc.start()
    try:
        with limited.connect() as sock:
            sock.sendall(
                b"POST /v1/predict HTTP/1.1\r\n" + NPZ + b"Content-Length: %d\r\n\r\n" % (64 << 20)
            )
            for _ in range(16):
                sock.sendall(b"\0" * 4096)
            status, _, body = answer(sock)  # the time per request runs out
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (status, body["error"]) == (408, "request_timeout")
    assert f"of {64 << 20} bytes came" in body["detail"]
    assert peak < 4 << 20, f"{peak} bytes allocated for 64 KiB received"


@pytest.mark.parametrize("where", ["request-line", "header", "body"])
def test_a_slowloris_gets_a_408_when_its_time_runs_out(limited: Limited, where: str) -> None:
    parts = {
        "request-line": b"POST /v1/predict HTTP/1.1\r\n",
        "header": b"POST /v1/predict HTTP/1.1\r\n" + NPZ + b"X-Slow: " + b"a" * 100,
        "body": b"POST /v1/predict HTTP/1.1\r\n"
        + NPZ
        + b"Content-Length: 1000\r\n\r\n"
        + b"\0" * 100,
    }[where]
    with limited.connect() as sock:
        sock.settimeout(0.05)
        got = b""
        for i, byte in enumerate(parts):  # a byte every 50 ms at most, each renewing a socket
            try:  # timeout, as long as the client likes; never the request's deadline
                sock.sendall(bytes([byte]))
                got = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                pytest.fail(f"reset after {i} bytes, with no answer")
            if got:
                break
        sock.settimeout(10)
        while chunk := sock.recv(65536):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), got[:200]
    assert json.loads(body)["error"] == "request_timeout"


def test_past_max_connections_a_new_one_gets_503_and_the_others_are_served(
    limited: Limited,
) -> None:
    with limited.client() as kept:
        assert kept.predict({"x": X})["y"].shape == (5, 3)  # holds one of the 3 slots
        hogs = [limited.connect() for _ in range(2)]  # idle: connected, sending nothing
        try:
            time.sleep(0.05)  # let the server accept them
            with limited.connect() as sock:
                sock.sendall(b"GET /v1/health HTTP/1.1\r\n\r\n")
                status, fields, body = answer(sock)
            assert (status, body["error"]) == (503, "too_many_connections")
            assert "server.max_connections" in body["detail"]
            assert fields["retry-after"] == "1"
            assert kept.predict({"x": X})["y"].shape == (5, 3)  # its connection kept going
            with limited.client() as late, pytest.raises(LocalServerError) as err:
                late.predict({"x": X})
            assert (err.value.status, err.value.error) == (503, "too_many_connections")
        finally:
            for hog in hogs:
                hog.close()
        with limited.client() as late:  # the hogs gone, a new client is served
            wait_for(lambda: _served(late), what="a new connection to be served")
        metrics = kept.metrics()
    refused = re.search(r"^edgefleet_http_connections_refused_total (\d+)$", metrics, re.M)
    assert refused is not None
    assert int(refused[1]) >= 2  # and once more for each retry before the hogs' threads ended


def _served(client: LocalClient) -> bool:
    try:
        return client.predict({"x": X})["y"].shape == (5, 3)
    except LocalServerError as exc:
        if exc.status != 503:
            raise
        return False


def test_a_body_cut_short_is_a_400_saying_how_much_came(limited: Limited) -> None:
    with limited.connect() as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\n" + NPZ + b"Content-Length: 1000\r\n\r\n" + b"\0" * 100
        )
        sock.shutdown(socket.SHUT_WR)
        status, _, body = answer(sock)
    assert (status, body["error"]) == (400, "malformed_body")
    assert "ended after 100 of 1000 bytes" in body["detail"]


@pytest.mark.parametrize(
    "framing",
    [b"Transfer-Encoding: chunked\r\n", b""],
    ids=["chunked", "no-content-length"],
)
def test_a_body_without_a_content_length_is_a_411(limited: Limited, framing: bytes) -> None:
    with limited.connect() as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\n" + NPZ + framing + b"Connection: close\r\n\r\n"
        )
        if framing:
            sock.sendall(b"5\r\nhello\r\n0\r\n\r\n")
        status, _, body = answer(sock)
    assert (status, body["error"]) == (411, "length_required")
    assert "Content-Length" in body["detail"]


def test_keep_alive_still_serves_many_requests_on_one_connection(limited: Limited) -> None:
    with limited.client() as client:
        for _ in range(50):
            assert client.predict({"x": X})["y"].shape == (5, 3)
        assert "edgefleet_http_connections_open 1" in client.metrics()


_FIELD = st.tuples(
    st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20),
    st.integers(0, 70_000),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    fields=st.lists(_FIELD, max_size=110),
    declared=st.one_of(st.none(), st.integers(0, 1 << 40)),
    sent=st.integers(0, 300_000),
    kind=st.sampled_from(["application/x-npz", "application/json", "application/x-npy", "text/x"]),
    valid=st.booleans(),
)
def test_fuzzed_head_and_body_sizes_never_get_a_500(
    limited: Limited,
    fields: list[tuple[str, int]],
    declared: int | None,
    sent: int,
    kind: str,
    valid: bool,
) -> None:
    body = npz(x=X) if valid else b"\x01" * sent
    head = b"POST /v1/predict HTTP/1.1\r\nConnection: close\r\nAccept: application/json\r\n"
    head += b"Content-Type: %s\r\n" % kind.encode()
    for name, size in fields:
        if name.lower() not in ("content-length", "transfer-encoding", "connection", "expect"):
            head += b"X-%s: %s\r\n" % (name.encode(), b"v" * size)
    if declared is not None:
        head += b"Content-Length: %d\r\n" % (len(body) if valid else declared)
    with limited.connect() as sock:
        try:
            sock.sendall(head + b"\r\n" + body)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # broken pipe, reset, not connected: the server answered and closed
            pass  # before all of it was sent; the answer is still read
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 "), data[:200]
    status = int(status_line.split()[1])
    assert status != 500, data[:500]
    document = json.loads(rest.partition(b"\r\n\r\n")[2])
    if status >= 400:
        assert set(document) >= {"error", "detail"}
    else:
        assert status == 200
        assert len(document["outputs"]["y"]) == 5


def test_a_large_json_answer_comes_in_chunks_with_the_same_values(limited: Limited) -> None:
    x = np.random.default_rng(1).normal(size=(30_000, 4)).astype(np.float32)
    body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
    with limited.connect() as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200 ")
        fields = {}
        while (line := reader.readline()) != b"\r\n":
            name, _, value = line.decode().partition(": ")
            fields[name.lower()] = value.strip()
        assert fields["transfer-encoding"] == "chunked"
        document = b""
        while size := int(reader.readline(), 16):
            document += reader.read(size)
            assert reader.read(2) == b"\r\n"
        assert reader.read(2) == b"\r\n"
        reader.close()
        with limited.client() as client:  # the same request as .npz, for comparison
            want = client.predict({"x": x})["y"]
    got = np.asarray(json.loads(document)["outputs"]["y"], np.float32)
    np.testing.assert_array_equal(got, want)


def test_the_agent_serves_with_the_limits_of_its_config(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    """server.max_connections and server.request_timeout_s, from agent.toml to the listener."""
    from edge_agent.agent import Agent
    from edge_agent.config import load_config
    from tests.edge_agent.agent_env import served_device

    with served_device(tmp_path, keypair) as device:
        socket_path = device.root / "agent.sock"
        device.write_config(
            paths={"initial_bundle": str(device.bundle("1.0.0"))},
            server={
                "tcp": False,
                "unix_socket": str(socket_path),
                "max_connections": 1,
                "request_timeout_s": 0.3,
            },
        )
        agent = Agent(load_config(device.config_path))
        agent.start()
        try:
            assert agent.server is not None
            served = Limited(agent.server, "unix")
            with served.connect() as slow:
                slow.sendall(b"POST /v1/predict HTTP/1.1\r\n")  # and nothing more
                with served.connect() as refused:
                    refused.sendall(b"GET /v1/health HTTP/1.1\r\n\r\n")
                    assert answer(refused)[0] == 503
                status, _, body = answer(slow)
            assert (status, body["error"]) == (408, "request_timeout")
            with served.client() as client:
                wait_for(lambda: _served(client), what="the agent to serve again")
        finally:
            agent.stop()

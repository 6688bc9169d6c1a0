"""The local inference server and its client, against real bundles on real sockets."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import re
import socket
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edge_agent.server
from edge_agent import open_bundle
from edge_agent.bundle import BundleFile, MemberRole, TensorSpec, describe_members, write_bundle
from edge_agent.errors import AgentError, ModelError, NoModelError
from edge_agent.keys import load_private_key
from edge_agent.model import BundleModel
from edge_agent.server import LocalClient, LocalServer, LocalServerError, PredictService
from tests.edge_agent.bundles import make_bundle, make_manifest, npz


class ModelService:
    """The agent's side of the server at its smallest: one `BundleModel`, or none yet."""

    def __init__(self, model: BundleModel | None) -> None:
        self.model = model

    def _active(self) -> BundleModel:
        if self.model is None:
            raise NoModelError("no model is active yet; the agent waits for its first bundle")
        return self.model

    def input_specs(self) -> list[TensorSpec]:
        return self._active().inputs

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._active().predict(inputs)

    def health(self) -> tuple[bool, dict[str, Any]]:
        if self.model is None:
            return False, {"status": "waiting", "detail": "no model is active yet"}
        return True, {"status": "serving", "model": self.model.manifest.model.name}

    def model_info(self) -> dict[str, Any]:
        model = self._active()
        return {"name": model.manifest.model.name, "version": model.manifest.model.version}

    def metrics(self) -> str:
        loaded = int(self.model is not None)
        return f"# TYPE edgefleet_model_loaded gauge\nedgefleet_model_loaded {loaded}\n"


def two_input_bundle(path: Path, private_key: Path) -> Path:
    """y = a + b, a and b float32 [batch, 2]: a model an .npy body cannot feed."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "pair",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    files = {"model/model.onnx": BundleFile(model.SerializeToString(), MemberRole.MODEL)}
    manifest = make_manifest(
        files,
        members=describe_members(files),
        inputs=[TensorSpec(name=n, dtype="float32", shape=["batch", 2]) for n in "ab"],
        outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 2])],
        selftest=None,
        reference=None,
    )
    return write_bundle(path, manifest, files, signing_key=load_private_key(private_key))


@pytest.fixture
def model(tmp_path: Path, keypair: tuple[Path, Path]) -> BundleModel:
    return open_bundle(make_bundle(tmp_path / "tiny.efb", keypair[0]), trust=[keypair[1]])


@pytest.fixture
def server(model: BundleModel, tmp_path: Path) -> Iterator[LocalServer]:
    with LocalServer(ModelService(model), port=0, unix_socket=tmp_path / "agent.sock") as s:
        yield s


@pytest.fixture
def client(server: LocalServer) -> Iterator[LocalClient]:
    assert server.url is not None
    with LocalClient(server.url) as c:
        yield c


def request(
    server: LocalServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, header fields in lower case, body)."""
    assert server.address is not None
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def exchange(server: LocalServer, data: bytes) -> bytes:
    """Raw bytes in, everything the server sends until it closes the connection out."""
    assert server.address is not None
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def error_of(body: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(body)
    assert set(document) >= {"error", "detail"}
    return document


X = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)


def test_the_service_of_these_tests_is_a_predict_service(model: BundleModel) -> None:
    service: PredictService = ModelService(model)  # mypy checks the protocol here
    assert service.health()[0]


def test_json_npz_and_npy_answers_equal_in_process_predict(
    server: LocalServer, client: LocalClient, model: BundleModel
) -> None:
    want = model.predict({"x": X})["y"]

    np.testing.assert_array_equal(client.predict({"x": X})["y"], want)

    status, fields, body = request(
        server,
        "POST",
        "/v1/predict",
        json.dumps({"inputs": {"x": X.tolist()}}).encode(),
        {"Content-Type": "application/json"},
    )
    assert (status, fields["content-type"]) == (200, "application/json")
    assert fields["server"] == "edgefleet-agent"
    answer = json.loads(body)
    assert answer["model"] == {"name": "tiny", "version": "1.0.0"}
    np.testing.assert_array_equal(np.asarray(answer["outputs"]["y"], dtype=np.float32), want)

    status, fields, body = request(
        server, "POST", "/v1/predict", npy(X), {"Content-Type": "application/x-npy"}
    )
    assert (status, fields["content-type"]) == (200, "application/x-npz")
    with np.load(io.BytesIO(body), allow_pickle=False) as outputs:
        assert outputs.files == ["y"]
        np.testing.assert_array_equal(outputs["y"], want)


def test_accept_chooses_the_answer_format(server: LocalServer, model: BundleModel) -> None:
    want = model.predict({"x": X})["y"]
    status, fields, body = request(
        server,
        "POST",
        "/v1/predict",
        json.dumps({"inputs": {"x": X.tolist()}}).encode(),
        {"Content-Type": "application/json", "Accept": "application/x-npz"},
    )
    assert (status, fields["content-type"]) == (200, "application/x-npz")
    with np.load(io.BytesIO(body), allow_pickle=False) as outputs:
        np.testing.assert_array_equal(outputs["y"], want)

    status, fields, body = request(
        server,
        "POST",
        "/v1/predict",
        npz(x=X),
        {"Content-Type": "application/x-npz", "Accept": "application/json"},
    )
    assert (status, fields["content-type"]) == (200, "application/json")
    np.testing.assert_array_equal(np.float32(json.loads(body)["outputs"]["y"]), want)


def test_outputs_come_back_writable_and_savez_compressed_inputs_are_read(
    server: LocalServer, client: LocalClient, model: BundleModel
) -> None:
    outputs = client.predict({"x": X})
    outputs["y"][0, 0] = 1.0  # an application may work on its outputs in place
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=X)
    status, _, body = request(
        server, "POST", "/v1/predict", buffer.getvalue(), {"Content-Type": "application/x-npz"}
    )
    assert status == 200
    with np.load(io.BytesIO(body), allow_pickle=False) as answer:
        np.testing.assert_array_equal(answer["y"], model.predict({"x": X})["y"])


@pytest.mark.parametrize(
    ("inputs", "name", "message"),
    [
        ({"x": X.astype(np.float64)}, "x", "input 'x': expected dtype float32, got float64"),
        ({"x": np.ones((2, 5), np.float32)}, "x", "input 'x': axis 1 must be 4, got 5"),
        ({}, "x", "missing input 'x' (expected float32[batch, 4])"),
        ({"x": X, "z": X}, "z", "unexpected input 'z'; the model takes x"),
    ],
    ids=["dtype", "shape", "missing", "unknown"],
)
def test_wrong_inputs_are_a_400_naming_the_input_expected_and_got(
    server: LocalServer, client: LocalClient, inputs: dict[str, np.ndarray], name: str, message: str
) -> None:
    with pytest.raises(LocalServerError) as raised:
        client.predict(inputs)
    err = raised.value
    assert (err.status, err.error, err.input) == (400, "invalid_input", name)
    assert err.detail is not None
    assert message in err.detail
    assert message in str(err)

    status, _, body = request(
        server,
        "POST",
        "/v1/predict",
        json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode(),
        {"Content-Type": "application/json"},
    )
    if name == "x" and "dtype" in message:
        assert status == 200  # JSON has no dtype: numbers become the input's float32
    else:
        assert status == 400
        assert error_of(body)["input"] == name


@pytest.mark.parametrize(
    ("value", "got"),
    [
        ([["a", "b", "c", "d"]], "got strings, nulls or mixed values"),
        ([[1, 2, 3, None]], "got strings, nulls or mixed values"),
        ("1.5", "got strings, nulls or mixed values"),
        ([[1, 2, 3, 4], [1, 2]], "got a ragged nested list"),
        ([[True, False, True, False]], "got true/false values"),
        ([[1e39, 0, 0, 0]], "got numbers beyond the range of float32"),
    ],
    ids=["strings", "null", "string-scalar", "ragged", "booleans", "overflow"],
)
def test_json_values_that_cannot_become_the_dtype_are_a_400_naming_the_input(
    server: LocalServer, value: object, got: str
) -> None:
    status, _, body = request(
        server,
        "POST",
        "/v1/predict",
        json.dumps({"inputs": {"x": value}}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 400
    problem = error_of(body)
    assert (problem["error"], problem["input"]) == ("invalid_input", "x")
    assert problem["detail"].startswith("input 'x': expected float32[batch, 4], ")
    assert got in problem["detail"]


def test_npy_feeds_only_a_single_input_model_and_npz_feeds_several(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    model = open_bundle(two_input_bundle(tmp_path / "pair.efb", keypair[0]), trust=[keypair[1]])
    a, b = np.ones((3, 2), np.float32), np.arange(6, dtype=np.float32).reshape(3, 2)
    with LocalServer(ModelService(model), port=0) as server:
        assert server.url is not None
        with LocalClient(server.url) as client:
            np.testing.assert_array_equal(client.predict({"a": a, "b": b})["y"], a + b)
            with pytest.raises(LocalServerError) as raised:
                client.predict({"a": a, "b": b[:2]})
            assert raised.value.detail is not None
            assert "dimension 'batch' is 2, but 3 in input 'a'" in raised.value.detail
        status, _, body = request(
            server, "POST", "/v1/predict", npy(a), {"Content-Type": "application/x-npy"}
        )
    assert status == 400
    assert "the model has 2 inputs (a, b): send an .npz" in error_of(body)["detail"]


def test_no_model_is_a_503_on_predict_model_and_health(tmp_path: Path) -> None:
    with LocalServer(ModelService(None), port=0) as server:
        assert server.url is not None
        with LocalClient(server.url) as client:
            with pytest.raises(LocalServerError) as raised:
                client.predict({"x": X})
            assert (raised.value.status, raised.value.error) == (503, "no_model")
            with pytest.raises(LocalServerError) as raised:
                client.model()
            assert raised.value.status == 503
            assert client.health() == (
                False,
                {"status": "waiting", "detail": "no model is active yet"},
            )
        status, _, body = request(
            server,
            "POST",
            "/v1/predict",
            json.dumps({"inputs": {"x": X.tolist()}}).encode(),
            {"Content-Type": "application/json"},
        )
        assert (status, error_of(body)["error"]) == (503, "no_model")
        assert "no model is active yet" in error_of(body)["detail"]


class AgentLikeService(ModelService):
    """Describes its model as the agent's Serving does: a BundleRef under "bundle"."""

    def model_info(self) -> dict[str, Any]:
        model = self._active()
        ref = {"model": model.manifest.model.name, "version": model.manifest.model.version}
        return {"bundle": {**ref, "profile": "x86-64-test", "sha256": "0" * 64}}


def test_json_answers_name_the_model_from_a_bundle_ref_too(model: BundleModel) -> None:
    with LocalServer(AgentLikeService(model), port=0) as server:
        status, _, body = request(
            server,
            "POST",
            "/v1/predict",
            json.dumps({"inputs": {"x": X.tolist()}}).encode(),
            {"Content-Type": "application/json"},
        )
    assert status == 200
    assert json.loads(body)["model"] == {"name": "tiny", "version": "1.0.0"}


class FailingService(ModelService):
    def __init__(self, model: BundleModel, error: Exception) -> None:
        super().__init__(model)
        self.error = error

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"),
    [(ModelError("the runtime failed: out of memory"), "model_error"), (KeyError("y"), None)],
    ids=["model-error", "bug"],
)
def test_a_failing_model_is_a_500_and_the_server_keeps_serving(
    model: BundleModel, error: Exception, code: str | None
) -> None:
    with LocalServer(FailingService(model, error), port=0) as server:
        assert server.url is not None
        with LocalClient(server.url) as client:
            with pytest.raises(LocalServerError) as raised:
                client.predict({"x": X})
            assert raised.value.status == 500
            assert raised.value.error == (code or "internal_error")
            assert client.health()[0]


def test_model_and_health_describe_the_active_model(client: LocalClient) -> None:
    assert client.model() == {"name": "tiny", "version": "1.0.0"}
    assert client.health() == (True, {"status": "serving", "model": "tiny"})


def test_a_body_over_the_limit_is_a_413_before_it_is_read(model: BundleModel) -> None:
    with LocalServer(ModelService(model), port=0, max_body_bytes=1000) as server:
        big = npz(x=np.ones((100, 4), np.float32))
        status, fields, body = request(
            server, "POST", "/v1/predict", big, {"Content-Type": "application/x-npz"}
        )
        assert (status, error_of(body)["error"]) == (413, "body_too_large")
        assert "at most 1000" in error_of(body)["detail"]
        assert fields["connection"] == "close"  # its unread body cannot be left on the line

        buffer = io.BytesIO()  # small on the wire, large unpacked
        np.savez_compressed(buffer, x=np.zeros((1000, 4), np.float32))
        assert len(buffer.getvalue()) < 1000
        status, _, body = request(
            server, "POST", "/v1/predict", buffer.getvalue(), {"Content-Type": "application/x-npz"}
        )
        assert (status, error_of(body)["error"]) == (413, "body_too_large")


@pytest.mark.parametrize("rows", [100, 400_000], ids=["small", "beyond-socket-buffers"])
def test_the_client_sees_the_413_however_much_it_sends(
    model: BundleModel, tmp_path: Path, rows: int
) -> None:
    path = tmp_path / "agent.sock"
    with LocalServer(ModelService(model), port=0, unix_socket=path, max_body_bytes=1000) as server:
        assert server.url is not None
        for client in (LocalClient(server.url), LocalClient(unix_socket=path)):
            with client:
                with pytest.raises(LocalServerError) as raised:
                    client.predict({"x": np.ones((rows, 4), np.float32)})
                assert (raised.value.status, raised.value.error) == (413, "body_too_large")
                assert client.predict({"x": X})["y"].shape == (5, 3)  # on a new connection


def test_an_unknown_content_type_is_a_415_naming_the_accepted_ones(server: LocalServer) -> None:
    status, _, body = request(server, "POST", "/v1/predict", b"1,2", {"Content-Type": "text/csv"})
    assert status == 415
    detail = error_of(body)["detail"]
    for kind in ("application/json", "application/x-npz", "application/x-npy"):
        assert kind in detail


def test_unknown_paths_are_a_404_listing_the_routes(server: LocalServer) -> None:
    status, _, body = request(server, "GET", "/v2/predict")
    assert (status, error_of(body)["error"]) == (404, "not_found")
    assert "POST /v1/predict, GET /v1/health, GET /v1/model, GET /metrics" in body.decode()


def test_a_wrong_method_is_a_405_with_allow(server: LocalServer) -> None:
    status, fields, body = request(server, "GET", "/v1/predict")
    assert (status, fields["allow"], error_of(body)["error"]) == (405, "POST", "method_not_allowed")
    status, fields, _ = request(server, "DELETE", "/v1/health")
    assert (status, fields["allow"]) == (405, "GET, HEAD")
    status, fields, body = request(server, "HEAD", "/v1/health")
    assert (status, body) == (200, b"")
    assert int(fields["content-length"]) > 0


@pytest.mark.parametrize(
    ("content_type", "body", "detail"),
    [
        ("application/json", b'{"inputs": {"x": [[1, 2', "the body is not valid JSON"),
        ("application/json", b'{"x": [[1, 2, 3, 4]]}', 'must be {"inputs"'),
        ("application/json", b'{"inputs": {}, "batch": 1}', "unknown field(s) 'batch'"),
        (
            "application/json",
            b'{"inputs": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
            "nested too deeply",
        ),
        ("application/x-npz", b"not a zip", "not an .npz archive"),
        ("application/x-npz", npz(x=X)[:-30], "cannot be read"),
        ("application/x-npy", b"\x93NUMPY\x01\x00garbage", "cannot be read"),
        ("application/x-npy", b"1,2,3,4", "not an .npy array"),
    ],
    ids=[
        "json-syntax",
        "json-shape",
        "json-field",
        "json-deep",
        "npz-magic",
        "npz-cut",
        "npy-header",
        "npy",
    ],
)
def test_malformed_bodies_are_a_400_saying_what_is_wrong(
    server: LocalServer, content_type: str, body: bytes, detail: str
) -> None:
    status, _, answer = request(server, "POST", "/v1/predict", body, {"Content-Type": content_type})
    assert (status, error_of(answer)["error"]) == (400, "malformed_body")
    assert detail in error_of(answer)["detail"]


def test_pickled_arrays_are_never_loaded(server: LocalServer) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}], dtype=object))
    status, _, body = request(
        server, "POST", "/v1/predict", buffer.getvalue(), {"Content-Type": "application/x-npz"}
    )
    assert status == 400
    assert "allow_pickle=False" in error_of(body)["detail"]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST /v1/predict HTTP/1.1\r\nContent-Length: 4x\r\n\r\n", 400),
        (b"POST /v1/predict HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n", 400),
        (
            b"POST /v1/predict HTTP/1.1\r\nContent-Type: application/x-npz\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            411,
        ),
        (b"GET /v1/health HTTP/1.1\r\nHost localhost\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\nHost: a\r\n folded: b\r\n\r\n", 400),
        (b"GET /v1/health\r\n\r\n", 400),
        (b"GET /v1/health HTTP/2.0\r\n\r\n", 505),
        (b"BREW /v1/health HTTP/1.1\r\n\r\n", 501),
    ],
    ids=["bad-length", "two-lengths", "chunked", "no-colon", "folded", "0.9", "2.0", "brew"],
)
def test_malformed_requests_get_a_json_error_and_the_connection_closes(
    server: LocalServer, head: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_agent.server")
    answer = exchange(server, head)  # returns only once the server has closed
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 %d " % status)
    assert b"\r\nConnection: close\r\n" in rest
    assert error_of(rest.partition(b"\r\n\r\n")[2])["detail"]
    assert any(f"-> {status}" in r.getMessage() for r in caplog.records)


def test_a_post_without_content_length_is_a_411_and_the_connection_stays(
    server: LocalServer,
) -> None:
    assert server.address is not None
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nContent-Type: application/x-npz\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 411 Length Required\r\n")
        sock.sendall(b"GET /v1/health HTTP/1.1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")


def test_expect_100_continue_is_answered_before_the_body(server: LocalServer) -> None:
    assert server.address is not None
    body = npz(x=X)
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-npz\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        assert sock.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")


def test_keep_alive_serves_many_requests_over_one_connection(
    server: LocalServer, model: BundleModel
) -> None:
    assert server.address is not None
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        conn.connect()
        first = conn.sock
        for i in range(200):
            x = X + np.float32(i)
            conn.request("POST", "/v1/predict", npz(x=x), {"Content-Type": "application/x-npz"})
            response = conn.getresponse()
            with np.load(io.BytesIO(response.read())) as outputs:
                np.testing.assert_array_equal(outputs["y"], model.predict({"x": x})["y"])
            assert not response.will_close
            assert conn.sock is first  # http.client reconnects silently: it did not have to
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
    finally:
        conn.close()
    assert "edgefleet_http_connections_open 1\n" in metrics


def test_concurrent_requests_from_8_threads_all_get_their_own_answers(
    server: LocalServer, model: BundleModel
) -> None:
    assert server.url is not None
    url = server.url
    failures: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            with LocalClient(url) as client:
                for _ in range(40):
                    x = rng.normal(size=(int(rng.integers(1, 9)), 4)).astype(np.float32)
                    got = client.predict({"x": x})["y"]
                    np.testing.assert_array_equal(got, model.predict({"x": x})["y"])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert 'edgefleet_http_requests_total{route="/v1/predict",code="200"} 320\n' in (
        request(server, "GET", "/metrics")[2].decode()
    )


def test_one_client_is_safe_to_share_between_threads(client: LocalClient) -> None:
    answers: list[np.ndarray] = []

    def work() -> None:
        for _ in range(20):
            answers.append(client.predict({"x": X})["y"])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 80
    for answer in answers:
        np.testing.assert_array_equal(answer, answers[0])


_SAMPLE = re.compile(
    r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*=\"[^\"\n]*\",?)*\})? "
    r"(-?[0-9.e+-]+|\+Inf|NaN)$"
)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format 0.0.4, strictly: every line a comment or a sample."""
    samples = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* \S", line), line
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        samples[line.rpartition(" ")[0]] = float(match.group(4))
    return samples


def test_metrics_are_prometheus_text_and_count_requests(
    server: LocalServer,
    client: LocalClient,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_agent.server")
    for _ in range(3):
        client.predict({"x": X})
    with pytest.raises(LocalServerError):
        client.predict({"x": X[:, :3]})
    request(server, "GET", "/nowhere")
    request(server, "GET", "/nowhere/else")

    status, fields, body = request(server, "GET", "/metrics")
    assert status == 200
    assert fields["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_metrics(body.decode())
    assert samples["edgefleet_model_loaded"] == 1  # the service's own lines come first
    assert samples['edgefleet_http_requests_total{route="/v1/predict",code="200"}'] == 3
    assert samples['edgefleet_http_requests_total{route="/v1/predict",code="400"}'] == 1
    assert samples['edgefleet_http_requests_total{route="other",code="404"}'] == 2
    series = 'edgefleet_http_request_duration_seconds_{}{{route="/v1/predict"}}'
    assert samples[series.format("count")] == 4
    assert (
        samples['edgefleet_http_request_duration_seconds_bucket{route="/v1/predict",le="+Inf"}']
        == 4
    )
    assert 0 < samples[series.format("sum")] < 60
    again = parse_metrics(client.metrics())
    assert again['edgefleet_http_requests_total{route="/metrics",code="200"}'] == 1
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "local server: 'GET /nowhere HTTP/1.1' -> 404" in logged
    assert capfd.readouterr().err == ""  # BaseHTTPRequestHandler's per-request stderr line


def test_the_unix_socket_serves_with_mode_0660_and_is_removed_on_stop(
    model: BundleModel, tmp_path: Path
) -> None:
    path = tmp_path / "agent.sock"
    with LocalServer(ModelService(model), port=None, unix_socket=path) as server:
        assert (server.address, server.url, server.unix_socket) == (None, None, path)
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        with LocalClient(unix_socket=path) as client:
            np.testing.assert_array_equal(
                client.predict({"x": X})["y"], model.predict({"x": X})["y"]
            )
            assert client.health()[0]
    assert not path.exists()


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_not(
    model: BundleModel, tmp_path: Path
) -> None:
    path = tmp_path / "agent.sock"
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(str(path))  # what a killed agent leaves behind: a socket file, no listener
    crashed.close()
    assert path.exists()
    with LocalServer(ModelService(model), port=None, unix_socket=path):
        with LocalClient(unix_socket=path) as client:
            assert client.health()[0]
        with pytest.raises(AgentError, match="another process is serving on"):
            LocalServer(ModelService(model), port=None, unix_socket=path).start()
        assert path.exists()  # the failed start left the live socket alone
    path.write_text("not a socket")
    with pytest.raises(AgentError, match="exists and is not a socket"):
        LocalServer(ModelService(model), port=None, unix_socket=path).start()
    assert path.read_text() == "not a socket"


def test_the_client_reconnects_once_when_the_server_closed_the_connection(
    model: BundleModel,
) -> None:
    first = LocalServer(ModelService(model), port=0)
    first.start()
    assert first.address is not None
    assert first.url is not None
    port = first.address[1]
    with LocalClient(first.url) as client:
        client.predict({"x": X})
        first.stop()  # closes the client's kept-alive connection
        with pytest.raises(LocalServerError, match="is the agent running") as raised:
            client.predict({"x": X})
        assert raised.value.status is None
        with LocalServer(ModelService(model), port=port):  # the agent restarted
            client.predict({"x": X})
            client.predict({"x": X})
        with LocalServer(ModelService(model), port=port):  # and again, under a kept-alive
            np.testing.assert_array_equal(
                client.predict({"x": X})["y"], model.predict({"x": X})["y"]
            )


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "closed the connection"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "sent a broken answer: status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "ended after 5 of 10"),
    ],
    ids=["closes", "not-http", "no-length", "short"],
)
def test_the_client_names_a_peer_that_is_not_the_local_server(answer: bytes, message: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def answer_once() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

        peer = threading.Thread(target=answer_once)
        peer.start()
        client = LocalClient(f"http://127.0.0.1:{port}", timeout=10)
        with client, pytest.raises(LocalServerError, match=message) as raised:
            client.health()
        peer.join()
    assert raised.value.status is None


def test_stop_ends_idle_kept_alive_connections(server: LocalServer) -> None:
    assert server.address is not None
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        server.stop()  # returns although the connection is open and idle
        assert sock.recv(65536) == b""


def test_a_port_in_use_is_a_clear_agent_error(model: BundleModel, server: LocalServer) -> None:
    assert server.address is not None
    with pytest.raises(AgentError, match=f"cannot listen on 127.0.0.1:{server.address[1]}"):
        LocalServer(ModelService(model), port=server.address[1]).start()


def test_nothing_to_listen_on_is_refused(model: BundleModel) -> None:
    with pytest.raises(ValueError, match="a TCP port or a unix_socket"):
        LocalServer(ModelService(model), port=None)


def test_the_public_api_is_a_sorted_all() -> None:
    names = edge_agent.server.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[:1].isupper(), n))
    public = {n for n in vars(edge_agent.server) if not n.startswith("_")}
    modules = {"client", "codec", "handler", "http", "jsonbody", "memory", "metrics", "npz"}
    modules |= {"problems", "service"}
    assert public - modules == set(names)


@pytest.mark.parametrize(
    "array",
    [
        np.ones((2, 3), np.float32),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.float16(1.5),
        np.array([True, False]),
        np.array(["ab", "c"]),
        np.zeros((0, 3), np.int8),
        np.arange(10, dtype=">i4"),
    ],
    ids=["float32", "fortran", "0-d", "bool", "unicode", "empty", "big-endian"],
)
def test_the_wire_npz_is_numpys_own_both_ways(array: np.ndarray) -> None:
    from edge_agent.npz import read_npz, write_npz

    with np.load(io.BytesIO(write_npz({"a": array, "ü": array})), allow_pickle=False) as f:
        for key in ("a", "ü"):
            np.testing.assert_array_equal(f[key], array)
            assert f[key].dtype == array.dtype
    for raw in (npz(a=array), bytearray(npz(a=array))):
        back = read_npz(raw)["a"]
        np.testing.assert_array_equal(back, array)
        assert (back.dtype, back.shape) == (array.dtype, array.shape)


def test_socket_permissions_survive_a_permissive_umask(model: BundleModel, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with LocalServer(ModelService(model), port=None, unix_socket=tmp_path / "a.sock"):
            assert stat.S_IMODE((tmp_path / "a.sock").stat().st_mode) == 0o660
    finally:
        os.umask(old)

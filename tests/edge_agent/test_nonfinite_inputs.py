"""NaN and inf in a caller's input are the caller's fault: refused, named, never held against
the model on probation.

In-process (`check_inputs`, `open_bundle(...).predict`), over the local server (a 400
`invalid_input` naming the input), and in a real agent process on probation, which
commits a good model however many NaN requests it is sent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from msgspec.structs import replace

from edge_agent import open_bundle
from edge_agent.agent import Agent
from edge_agent.bundle import TensorSpec
from edge_agent.config import load_config
from edge_agent.errors import InputError
from edge_agent.model import BundleModel, check_inputs
from edge_agent.server import LocalClient, LocalServer, LocalServerError
from edge_agent.swap.store import BundleStore, Probation, StoreState
from tests.edge_agent import agent_bundles
from tests.edge_agent.agent_env import served_device, spooled_events, wait_for
from tests.edge_agent.bundles import make_bundle
from tests.edge_agent.test_server import ModelService

ROOT = Path(__file__).resolve().parents[2]
FLOATS = (np.float16, np.float32, np.float64)
INTS = (np.int8, np.int32, np.int64, np.uint8)
NONFINITE = (np.nan, np.inf, -np.inf)


@st.composite
def poisoned(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...]]:
    """A finite float array (any magnitude, so sums may overflow) with NaN/inf put somewhere;
    and the first place (in C order) that holds one."""
    dtype = draw(st.sampled_from(FLOATS))
    array = draw(
        hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
            elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False),
        )
    )
    flat = array.reshape(-1)
    places = draw(st.sets(st.integers(0, flat.size - 1), min_size=1, max_size=flat.size))
    for i in places:
        flat[i] = draw(st.sampled_from(NONFINITE))
    first = tuple(int(i) for i in np.unravel_index(min(places), array.shape))
    return array, first


def spec(array: np.ndarray) -> TensorSpec:
    return TensorSpec(name="x", dtype=str(array.dtype), shape=[None] * array.ndim)


@given(poisoned())
def test_nan_or_inf_anywhere_in_a_float_input_is_refused_naming_it_and_where(
    case: tuple[np.ndarray, tuple[int, ...]],
) -> None:
    array, first = case
    with pytest.raises(InputError) as err:
        check_inputs([spec(array)], {"x": array})
    assert err.value.input == "x"
    assert "input 'x' holds NaN or inf" in str(err.value)
    assert f"at index {list(first)}" in str(err.value)


@given(
    hnp.arrays(
        st.sampled_from(FLOATS),
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=8),
        elements={"allow_nan": False, "allow_infinity": False},
    )
)
def test_finite_float_inputs_pass_even_when_their_sum_overflows(array: np.ndarray) -> None:
    assert check_inputs([spec(array)], {"x": array})["x"] is array


@given(
    hnp.arrays(st.sampled_from(INTS), hnp.array_shapes(min_dims=1, max_dims=3, max_side=8)),
)
def test_integer_inputs_are_not_checked(array: np.ndarray) -> None:
    assert check_inputs([spec(array)], {"x": array})["x"] is array


@pytest.fixture
def model(tmp_path: Path, keypair: tuple[Path, Path]) -> BundleModel:
    return open_bundle(make_bundle(tmp_path / "tiny.efb", keypair[0]), trust=[keypair[1]])


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 8), data=st.data())
def test_open_bundle_refuses_them_on_its_fast_path_too(
    model: BundleModel, rows: int, data: st.DataObject
) -> None:
    x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
    assert model.predict({"x": x})["y"].shape == (rows, 3)
    where = (data.draw(st.integers(0, rows - 1)), data.draw(st.integers(0, 3)))
    x[where] = data.draw(st.sampled_from(NONFINITE))
    with pytest.raises(InputError, match=rf"at index \[{where[0]}, {where[1]}\]"):
        model.predict({"x": x})


def post_json(where: Path | tuple[str, int], document: object) -> tuple[int, dict[str, Any]]:
    """POST a JSON body on a fresh connection (a Unix socket path or a TCP address)."""
    body = json.dumps(document).encode()  # json.dumps writes NaN and Infinity as bare words
    family = socket.AF_UNIX if isinstance(where, Path) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(where) if isinstance(where, Path) else where)
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_the_local_server_answers_400_naming_the_input_whatever_the_body_format(
    model: BundleModel,
) -> None:
    x = np.ones((2, 4), np.float32)
    x[1, 2] = np.inf
    with LocalServer(ModelService(model), port=0) as server, LocalClient(server.url) as client:
        assert server.address is not None
        with pytest.raises(LocalServerError) as err:
            client.predict({"x": x})
        assert (err.value.status, err.value.error, err.value.input) == (400, "invalid_input", "x")
        assert err.value.detail is not None
        assert "holds NaN or inf" in err.value.detail
        status, body = post_json(server.address, {"inputs": {"x": x.tolist()}})
        assert (status, body["error"], body["input"]) == (400, "invalid_input", "x")
        assert "at index [1, 2]" in body["detail"]
        assert client.predict({"x": np.ones((2, 4), np.float32)})["y"].shape == (2, 3)


@pytest.mark.slow
def test_a_real_agent_on_probation_commits_despite_nan_inputs(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    """A good v2 on probation, sent more NaN requests than valid ones: it commits, and the
    NaN requests are counted as invalid input, not as the model's errors."""
    with served_device(tmp_path, keypair) as device:
        socket_path = device.root / "agent.sock"
        device.write_config(
            paths={"initial_bundle": str(device.bundle("1.0.0"))},
            server={"tcp": False, "unix_socket": str(socket_path)},
            update={"probation_s": 600, "probation_inferences": 40, "max_error_rate": 0.0},
        )
        setup = Agent(load_config(device.config_path))  # installs v1, as a first boot does
        setup.start()
        setup.stop()
        store = BundleStore(device.state_dir)
        v1 = store.read_state().active
        assert v1 is not None
        # v2 activated and on probation, as a restart in the middle of one leaves it
        v2_path = device.bundle("2.0.0")
        v2_sha = agent_bundles.sha256(v2_path)
        shutil.copy(v2_path, store.bundles / f"{v2_sha}.efb")
        v2 = replace(v1, sha256=v2_sha, version="2.0.0")
        store.write_state(
            StoreState(
                active=v2,
                previous=v1,
                probation=Probation(
                    started_at=0.0, boots=0, restore_active=v1, restore_previous=None
                ),
            )
        )
        log = (device.root / "agent.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "agent", "run", "--config", device.config_path],
            cwd=ROOT,
            stdout=log,
            stderr=log,
            env=dict(os.environ),
        )
        try:
            wait_for(socket_path.exists, what="the agent's socket")
            good = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
            bad = good.copy()
            bad[0, 1] = np.nan
            with LocalClient(unix_socket=socket_path, timeout=10) as client:
                wait_for(lambda: client.health()[1]["probation"], what="v2 on probation")
                for i in range(80):  # 60 NaN requests (npz and JSON), 20 valid ones, mixed
                    if i % 4 == 3:
                        client.predict({"x": good})
                    elif i % 2:
                        status, body = post_json(socket_path, {"inputs": {"x": bad.tolist()}})
                        assert (status, body["error"], body["input"]) == (400, "invalid_input", "x")
                    else:
                        with pytest.raises(LocalServerError) as err:
                            client.predict({"x": bad})
                        assert (err.value.status, err.value.input) == (400, "x")
                assert client.health()[1]["probation"]  # 20 valid requests of 40
                for _ in range(20):
                    client.predict({"x": good})
                wait_for(lambda: not client.health()[1]["probation"], what="the probation to end")
                assert client.model()["bundle"]["version"] == "2.0.0"
                metrics = client.metrics()
            assert 'edgefleet_errors_total{kind="invalid_input"} 60' in metrics, metrics
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
            log.close()
        updates = [e for e in spooled_events(device.state_dir) if e.type.startswith("update.")]
        assert updates[-1].type == "update.committed", updates
        assert "0 errors" in updates[-1].message
        assert not any(e.type == "update.rolled_back" for e in updates)

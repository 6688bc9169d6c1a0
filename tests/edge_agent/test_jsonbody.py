"""The streaming JSON body decoder agrees with `json.loads` + `numpy.asarray`, however the
body is cut into chunks, and refuses what they refuse (ragged lists, strings, bad JSON)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.bundle import TensorSpec
from edge_agent.errors import InputError
from edge_agent.server import codec
from edge_agent.server.problems import MalformedBodyError


def decode(body: bytes, specs: list[TensorSpec], chunk: int) -> dict[str, np.ndarray]:
    decoder = codec.json_decoder(specs)
    for start in range(0, len(body), chunk):
        decoder.feed(body[start : start + chunk])
    return decoder.close()


def reference(value: Any, spec: TensorSpec) -> np.ndarray:
    """What the server did before: json.loads, numpy.asarray, the exact conversion."""
    return codec._convert(spec.name, value, spec)


@settings(max_examples=150, deadline=None)
@given(
    array=hnp.arrays(
        st.sampled_from([np.float64, np.float32, np.int32]),
        hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
        elements={"allow_nan": False, "allow_infinity": False},
    ),
    target=st.sampled_from(["float16", "float32", "float64", "int64", "int8", "uint8"]),
    chunk=st.integers(1, 64),
    indent=st.sampled_from([None, 0, 2]),
)
def test_rectangular_lists_decode_as_json_loads_and_asarray_would(
    array: np.ndarray, target: str, chunk: int, indent: int | None
) -> None:
    spec = TensorSpec(name="x", dtype=target, shape=[None] * array.ndim)
    body = json.dumps({"inputs": {"x": array.tolist()}}, indent=indent).encode()
    try:
        want = reference(array.tolist(), spec)
    except InputError:
        with pytest.raises(InputError):
            decode(body, [spec], chunk)
        return
    got = decode(body, [spec], chunk)["x"]
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


_LEAF = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6), st.just("s"), st.none())
_NESTED = st.recursive(st.lists(_LEAF, max_size=4), lambda inner: st.lists(inner, max_size=4))


@settings(max_examples=300, deadline=None)
@given(value=_NESTED, chunk=st.integers(1, 40))
def test_any_nested_list_is_decoded_or_refused_as_before(value: list[Any], chunk: int) -> None:
    spec = TensorSpec(name="x", dtype="float32", shape=[None])
    body = json.dumps({"inputs": {"x": value}}).encode()
    try:
        want = reference(value, spec)
    except InputError:
        with pytest.raises(InputError) as err:
            decode(body, [spec], chunk)
        assert err.value.input == "x"
        return
    got = decode(body, [spec], chunk)["x"]
    assert (got.dtype, got.shape) == (want.dtype, want.shape)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": {"x": [1 2]}}',
        b'{"inputs": {"x": [1,,2]}}',
        b'{"inputs": {"x": [1, 2,]}}',
        b'{"inputs": {"x": [[1] [2]]}}',
        b'{"inputs": {"x": [1, 2]}',
        b'{"inputs": {"x": [1, 2]}} extra',
        b'{"inputs": {"x" [1]}}',
    ],
)
def test_bodies_that_are_not_json_are_malformed(body: bytes) -> None:
    spec = TensorSpec(name="x", dtype="float32", shape=[None])
    for chunk in (1, 3, len(body)):
        with pytest.raises(MalformedBodyError):
            decode(body, [spec], chunk)


def test_several_inputs_and_scalars_in_one_body() -> None:
    specs = [
        TensorSpec(name="a", dtype="float32", shape=[None, 2]),
        TensorSpec(name="b", dtype="bool", shape=[None]),
        TensorSpec(name="k", dtype="int64", shape=[]),
    ]
    body = b'{"inputs": {"a": [[1.5, 2], [3, 4e2]], "b": [true, false], "k": 7, "note": "hi"}}'
    got = decode(body, specs, 5)
    np.testing.assert_array_equal(got["a"], np.array([[1.5, 2], [3, 400]], np.float32))
    np.testing.assert_array_equal(got["b"], [True, False])
    assert got["k"].dtype == np.int64
    assert int(got["k"]) == 7
    assert str(got["note"]) == "hi"  # an unknown input: the service names it


@settings(max_examples=50, deadline=None)
@given(
    array=hnp.arrays(
        st.sampled_from([np.float32, np.float64, np.int64]),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9),
    ),
    rows=st.integers(1, 5),
)
def test_an_answer_in_pieces_is_the_same_document(array: np.ndarray, rows: int) -> None:
    outputs = {"y": array, "z": np.ones(3, np.float32)}
    model = {"name": "tiny", "version": "1.0.0"}
    pieces = b"".join(codec.encode_json_chunks(outputs, model, rows=rows))
    assert pieces == codec.encode_json(outputs, model)

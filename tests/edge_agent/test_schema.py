"""edge_agent.schema: msgspec's errors as a kind, the field's path and a sentence."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import pytest
from msgspec import Meta, field

from edge_agent.schema import Problem, Strict, convert, decode_json, problem, to_builtins


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Leaf(Strict, frozen=True, kw_only=True):
    count: Annotated[int, Meta(ge=0)]
    colour: Colour = Colour.RED

    def __post_init__(self) -> None:
        if self.count == 13:
            raise ValueError("count: 13 is unlucky")


class Doc(Strict, frozen=True, kw_only=True):
    name: str
    leaf: Leaf | None = None
    leaves: list[Leaf] = field(default_factory=list)
    by_key: dict[Annotated[str, Meta(pattern="^[a-z]+$")], Leaf] = field(default_factory=dict)
    mode: Literal["fast", "safe"] = "safe"
    where: Path | None = None


def wrong(raw: object) -> Problem:
    with pytest.raises(msgspec.ValidationError) as caught:
        convert(raw, Doc)
    return problem(caught.value, Doc)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"name": "a", "extra": 1}, Problem("unknown", "extra", "unknown field")),
        (
            {"name": "a", "leaf": {"count": 1, "x": 2}},
            Problem("unknown", "leaf.x", "unknown field"),
        ),
        ({}, Problem("missing", "name", "required field is missing")),
        ({"name": "a", "leaf": {}}, Problem("missing", "leaf.count", "required field is missing")),
        (
            {"name": "a", "leaves": [{"count": 1}, {"count": -1}]},
            Problem("invalid", "leaves[1].count", "Expected `int` >= 0"),
        ),
        (
            {"name": "a", "leaf": {"count": 13}},
            Problem("invalid", "leaf.count", "13 is unlucky"),
        ),
        (
            {"name": "a", "leaf": {"count": 1, "colour": "green"}},
            Problem("invalid", "leaf.colour", "'green' is not one of 'red', 'blue'"),
        ),
        (
            {"name": "a", "by_key": {"k": {"count": 1, "colour": "pink"}}},
            Problem("invalid", "by_key[...].colour", "'pink' is not one of 'red', 'blue'"),
        ),
        (
            {"name": "a", "mode": "slow"},
            Problem("invalid", "mode", "'slow' is not one of 'fast', 'safe'"),
        ),
        (
            {"name": "a", "where": 3},
            Problem("invalid", "where", "expected a path (a string), got int"),
        ),
    ],
)
def test_each_problem_names_its_field(raw: object, expected: Problem) -> None:
    assert wrong(raw) == expected


def test_a_bad_mapping_key_is_said_to_be_a_key() -> None:
    found = wrong({"name": "a", "by_key": {"UPPER": {"count": 1}}})
    assert found.kind == "invalid"
    assert found.path == "by_key"
    assert found.message.startswith("a key expected `str` matching regex")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"name": "a", "by_key": {"k": {"count": 1}, "m": {"count": 1, "colour": "pink"}}},
            Problem("invalid", 'by_key["m"].colour', "'pink' is not one of 'red', 'blue'"),
        ),
        (
            {"name": "a", "by_key": {"k": {"count": 13}}},
            Problem("invalid", 'by_key["k"].count', "13 is unlucky"),
        ),
        (
            {"name": "a", "by_key": {"k": {"count": 1}, "m": {"count": 1, "x": 0}}},
            Problem("unknown", 'by_key["m"].x', "unknown field"),
        ),
        (
            {"name": "a", "by_key": {"ok": {"count": 1}, "UPPER": {"count": 1}}},
            Problem(
                "invalid",
                "by_key",
                "key 'UPPER': expected `str` matching regex '^[a-z]+$'",
            ),
        ),
    ],
)
def test_given_the_document_a_mapping_problem_names_its_key(
    raw: dict[str, object], expected: Problem
) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        convert(raw, Doc)
    assert problem(caught.value, Doc, document=raw) == expected
    data = msgspec.json.encode(raw)  # the same, found from the JSON bytes
    with pytest.raises(msgspec.ValidationError) as caught:
        decode_json(data, Doc)
    assert problem(caught.value, Doc, document=data) == expected


def test_a_document_that_does_not_tell_leaves_the_path_as_msgspec_gave_it() -> None:
    raw = {"name": "a", "by_key": {"k": {"count": 1, "colour": "pink"}}}
    with pytest.raises(msgspec.ValidationError) as caught:
        convert(raw, Doc)
    assert problem(caught.value, Doc, document=b"not json").path == "by_key[...].colour"
    assert problem(caught.value, Doc, document={"name": "a"}).path == "by_key[...].colour"


def test_round_trip_through_builtins_and_json() -> None:
    doc = Doc(name="a", leaves=[Leaf(count=2, colour=Colour.BLUE)], where=Path("/x"))
    data = to_builtins(doc)
    assert data["leaves"] == [{"count": 2, "colour": "blue"}]
    assert data["where"] == "/x"
    assert convert(data, Doc) == doc
    assert decode_json(msgspec.json.encode(data), Doc) == doc


def test_structs_are_frozen_and_keyword_only() -> None:
    leaf = Leaf(count=1)
    with pytest.raises(AttributeError):
        leaf.count = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Leaf(1)  # type: ignore[call-arg]


def test_a_quoted_number_gets_the_hint() -> None:
    found = wrong({"name": "a", "leaf": {"count": "3"}})
    assert found == Problem(
        "invalid", "leaf.count", "Expected `int`, got `str` (write the number without quotes)"
    )


def test_to_builtins_refuses_what_it_cannot_write_rather_than_stringify_it() -> None:
    import numpy as np

    with pytest.raises(TypeError, match="cannot write a float32"):
        to_builtins({"x": np.float32(0.5)})

"""Hardware profiles are strict data files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.errors import ProfileError, UnknownProfileError
from edge_agent.profiles import builtin_profiles_dir, list_profiles, load_profile

PI4 = builtin_profiles_dir() / "raspberry-pi-4.toml"


def test_every_shipped_profile_loads_and_is_consistent() -> None:
    profiles = list_profiles()
    assert len(profiles) >= 8
    for p in profiles:
        assert p.budgets.max_model_bytes <= p.hardware.storage_bytes, p.name
        assert p.budgets.max_memory_bytes <= p.hardware.ram_bytes, p.name
        # a runtime reads only formats it can load
        assert (p.runtime.name.value, p.runtime.format.value) in {
            ("onnxruntime", "onnx"),
            ("onnxruntime", "ort"),
            ("tflite", "tflite"),
            ("tflite-micro", "tflite"),
        }, p.name


def write_variant(tmp_path: Path, old: str, new: str, name: str = "raspberry-pi-4") -> Path:
    directory = tmp_path / "profiles"
    directory.mkdir(exist_ok=True)
    text = PI4.read_text()
    assert old in text
    path = directory / f"{name}.toml"
    path.write_text(text.replace(old, new))
    return directory


def test_a_misspelt_key_is_named_with_its_file(tmp_path: Path) -> None:
    directory = write_variant(tmp_path, "symmetric_weights = true", "symetric_weights = true")
    expected = (
        "raspberry-pi-4.toml: unknown key 'quantization.symetric_weights' "
        "(did you mean 'quantization.symmetric_weights'?)"
    )
    with pytest.raises(ProfileError, match=re.escape(expected)):
        load_profile("raspberry-pi-4", [directory])


def test_a_missing_key_and_a_bad_value_are_named(tmp_path: Path) -> None:
    directory = write_variant(tmp_path, "threads = 4\n", "")
    with pytest.raises(ProfileError, match=r"required key 'runtime\.threads' is missing"):
        load_profile("raspberry-pi-4", [directory])
    directory = write_variant(tmp_path, 'precisions = ["int8-static"', 'precisions = ["int4"')
    with pytest.raises(ProfileError, match=r"'quantization\.precisions\[0\]' is invalid"):
        load_profile("raspberry-pi-4", [directory])


def test_a_user_directory_overrides_a_builtin_profile(tmp_path: Path) -> None:
    directory = write_variant(tmp_path, "threads = 4", "threads = 2")
    assert load_profile("raspberry-pi-4", [directory]).runtime.threads == 2
    assert load_profile("raspberry-pi-4").runtime.threads == 4


def test_a_profile_whose_name_differs_from_its_file_is_refused(tmp_path: Path) -> None:
    directory = write_variant(tmp_path, "threads = 4", "threads = 4", name="pi4-copy")
    with pytest.raises(ProfileError, match="differs from the file name"):
        load_profile("pi4-copy", [directory])


def test_unknown_names_get_suggestions() -> None:
    with pytest.raises(UnknownProfileError) as err:
        load_profile("jetson-nano")
    assert "jetson-orin-nano" in err.value.suggestions

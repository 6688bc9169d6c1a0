"""The signed bundle: round trip, and every way a hostile or broken file is refused."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.bundle import (
    BundleFile,
    BundleLimits,
    MemberRole,
    canonical_json,
    inspect_bundle,
    read_bundle,
    write_bundle,
)
from edge_agent.bundle.signature import make_signature
from edge_agent.errors import (
    BundleFormatError,
    DuplicateMemberError,
    HashMismatchError,
    LinkMemberError,
    ManifestError,
    MemberTooLargeError,
    MissingMemberError,
    SignatureError,
    SizeMismatchError,
    SpecialMemberError,
    UnexpectedMemberError,
    UnknownFieldError,
    UnsafePathError,
    UntrustedKeyError,
)
from edge_agent.keys import load_private_key, load_trusted_keys, write_keypair
from tests.edge_agent.bundles import (
    bundle_files,
    make_bundle,
    make_manifest,
    regular,
    rewrite_tar,
    run_onnx,
)

MODEL = "model/model.onnx"


@pytest.fixture
def bundle(tmp_path: Path, keypair: tuple[Path, Path]) -> Path:
    return make_bundle(tmp_path / "tiny.efb", keypair[0])


@pytest.fixture
def trust(keypair: tuple[Path, Path]) -> list:
    return load_trusted_keys([keypair[1]])


def test_round_trip_runs_the_model_and_matches_the_selftest(
    bundle: Path, trust: list, tmp_path: Path
) -> None:
    verified = read_bundle(bundle, trust=trust)
    assert verified.manifest == make_manifest(bundle_files())
    assert verified.signer_key_id == trust[0].key_id

    paths = verified.extract(tmp_path / "out")
    assert sorted(paths) == sorted(verified.manifest.members)
    model = paths[MODEL].read_bytes()
    inputs = np.load(paths["selftest/inputs.npz"])
    expected = np.load(paths["selftest/outputs.npz"])
    np.testing.assert_allclose(run_onnx(model, inputs["x"]), expected["y"], rtol=1e-4, atol=1e-5)
    assert verified.read_member(MODEL) == model


def test_bundle_is_a_deterministic_tar_with_manifest_first(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    a = make_bundle(tmp_path / "a.efb", keypair[0])
    b = make_bundle(tmp_path / "b.efb", keypair[0])
    assert a.read_bytes() == b.read_bytes()  # Ed25519 signatures are deterministic too
    with tarfile.open(a) as tf:
        names = tf.getnames()
    assert names[:2] == ["manifest.json", "signature.json"]
    assert names[2:] == sorted(names[2:])


def test_inspect_reads_without_trust(bundle: Path) -> None:
    info = inspect_bundle(bundle)
    assert info.manifest.model.name == "tiny"
    assert info.member_sizes[MODEL] == info.manifest.members[MODEL].size


def flip_byte(path: Path, member: str) -> None:
    with tarfile.open(path) as tf:
        offset = tf.getmember(member).offset_data
    with path.open("r+b") as fh:
        fh.seek(offset + 10)
        byte = fh.read(1)
        fh.seek(offset + 10)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_one_flipped_byte_in_the_model_is_caught(bundle: Path, trust: list) -> None:
    flip_byte(bundle, MODEL)
    with pytest.raises(HashMismatchError, match=re.escape("model/model.onnx")) as err:
        read_bundle(bundle, trust=trust)
    assert err.value.member == MODEL


def test_one_flipped_byte_in_the_manifest_breaks_the_signature(bundle: Path, trust: list) -> None:
    flip_byte(bundle, "manifest.json")
    with pytest.raises(SignatureError) as err:
        read_bundle(bundle, trust=trust)
    assert err.value.member == "manifest.json"


def test_a_bundle_signed_by_another_key_is_untrusted(bundle: Path, tmp_path: Path) -> None:
    write_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    with pytest.raises(UntrustedKeyError, match="not trusted") as err:
        read_bundle(bundle, trust=load_trusted_keys([tmp_path / "other.pub"]))
    assert err.value.member == "signature.json"


def test_any_of_several_trusted_keys_is_enough(
    bundle: Path, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    write_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    read_bundle(bundle, trust=load_trusted_keys([tmp_path / "other.pub", keypair[1]]))


def test_a_member_added_is_named(bundle: Path, trust: list, tmp_path: Path) -> None:
    bad = rewrite_tar(
        bundle, tmp_path / "bad.efb", lambda m: [*m, regular("model/extra.bin", b"x")]
    )
    with pytest.raises(UnexpectedMemberError, match=re.escape("model/extra.bin")) as err:
        read_bundle(bad, trust=trust)
    assert err.value.member == "model/extra.bin"


def test_a_member_removed_is_named(bundle: Path, trust: list, tmp_path: Path) -> None:
    bad = rewrite_tar(
        bundle,
        tmp_path / "bad.efb",
        lambda m: [x for x in m if x[0].name != "reference/stats.json"],
    )
    with pytest.raises(MissingMemberError, match=re.escape("reference/stats.json")) as err:
        read_bundle(bad, trust=trust)
    assert err.value.member == "reference/stats.json"


@pytest.mark.parametrize(
    "name", ["../evil.sh", "model/../../evil.sh", "/etc/cron.d/evil", "a//b", "a\\b"]
)
def test_unsafe_member_paths_are_refused(
    bundle: Path, trust: list, tmp_path: Path, name: str
) -> None:
    bad = rewrite_tar(bundle, tmp_path / "bad.efb", lambda m: [*m, regular(name, b"#!/bin/sh\n")])
    with pytest.raises(UnsafePathError) as err:
        read_bundle(bad, trust=trust)
    assert err.value.member == name
    with pytest.raises(UnsafePathError):  # inspecting is no less careful
        inspect_bundle(bad)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_link_members_are_refused(bundle: Path, trust: list, tmp_path: Path, kind: bytes) -> None:
    def add_link(members: list) -> list:
        info = tarfile.TarInfo("model/weights.bin")
        info.type = kind
        info.linkname = "/etc/shadow" if kind == tarfile.SYMTYPE else MODEL
        return [*members, (info, b"")]

    bad = rewrite_tar(bundle, tmp_path / "bad.efb", add_link)
    with pytest.raises(LinkMemberError, match=re.escape("model/weights.bin")) as err:
        read_bundle(bad, trust=trust)
    assert err.value.member == "model/weights.bin"


@pytest.mark.parametrize(
    "kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.DIRTYPE]
)
def test_device_fifo_and_directory_members_are_refused(
    bundle: Path, trust: list, tmp_path: Path, kind: bytes
) -> None:
    def add_special(members: list) -> list:
        info = tarfile.TarInfo("model/dev")
        info.type = kind
        return [*members, (info, b"")]

    bad = rewrite_tar(bundle, tmp_path / "bad.efb", add_special)
    with pytest.raises(SpecialMemberError) as err:
        read_bundle(bad, trust=trust)
    assert err.value.member == "model/dev"


def test_an_oversized_member_is_refused_before_it_is_read(bundle: Path, trust: list) -> None:
    size = read_bundle(bundle, trust=trust).manifest.members[MODEL].size
    with pytest.raises(MemberTooLargeError, match=re.escape("model/model.onnx")) as err:
        read_bundle(bundle, trust=trust, limits=BundleLimits(max_member_bytes=size - 1))
    assert err.value.member == MODEL


def test_a_tar_bomb_of_huge_declared_size_is_refused_by_its_header(
    bundle: Path, trust: list, tmp_path: Path
) -> None:
    with tarfile.open(bundle) as tf:
        last = tf.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    info = tarfile.TarInfo("model/huge.bin")
    info.size = 64 << 30  # 64 GiB declared, no data behind it
    bomb = tmp_path / "bomb.efb"
    bomb.write_bytes(bundle.read_bytes()[:end] + info.tobuf(format=tarfile.PAX_FORMAT))
    with pytest.raises(MemberTooLargeError, match="over the") as err:
        read_bundle(bomb, trust=trust)
    assert err.value.member == "model/huge.bin"


def test_too_many_members_are_refused(bundle: Path, trust: list, tmp_path: Path) -> None:
    bad = rewrite_tar(
        bundle, tmp_path / "bad.efb", lambda m: m + [regular(f"x/{i}", b"") for i in range(100)]
    )
    with pytest.raises(MemberTooLargeError, match="more than 64 members"):
        read_bundle(bad, trust=trust)


def test_a_duplicate_member_is_refused(bundle: Path, trust: list, tmp_path: Path) -> None:
    bad = rewrite_tar(bundle, tmp_path / "bad.efb", lambda m: [*m, regular(MODEL, b"shadow")])
    with pytest.raises(DuplicateMemberError) as err:
        read_bundle(bad, trust=trust)
    assert err.value.member == MODEL


def resign(bundle: Path, dst: Path, private: Path, mutate) -> Path:
    """Edit the manifest JSON and sign it with the trusted key (a newer or careless publisher)."""
    key = load_private_key(private)

    def edit(members: list) -> list:
        out = []
        manifest = json.loads(next(d for i, d in members if i.name == "manifest.json"))
        mutate(manifest)
        manifest_bytes = canonical_json(manifest)
        for info, data in members:
            if info.name == "manifest.json":
                data = manifest_bytes
            elif info.name == "signature.json":
                data = make_signature(key, manifest_bytes)
            info.size = len(data)
            out.append((info, data))
        return out

    return rewrite_tar(bundle, dst, edit)


def test_an_unknown_manifest_field_is_named(
    bundle: Path, trust: list, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = resign(bundle, tmp_path / "bad.efb", keypair[0], lambda m: m.update(accelerator="npu"))
    with pytest.raises(UnknownFieldError, match="'accelerator'") as err:
        read_bundle(bad, trust=trust)
    assert err.value.field == "accelerator"


def test_an_unknown_nested_manifest_field_is_named_with_its_path(
    bundle: Path, trust: list, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = resign(
        bundle, tmp_path / "bad.efb", keypair[0], lambda m: m["inputs"][0].update(mean=0.5)
    )
    with pytest.raises(UnknownFieldError) as err:
        read_bundle(bad, trust=trust)
    assert err.value.field == "inputs[0].mean"


def test_a_bad_member_entry_is_named_by_its_member(
    bundle: Path, trust: list, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = resign(
        bundle, tmp_path / "bad.efb", keypair[0], lambda m: m["members"][MODEL].update(sha256="x")
    )
    with pytest.raises(ManifestError, match="is invalid: Expected `str` matching") as err:
        read_bundle(bad, trust=trust)
    assert err.value.field == f'members["{MODEL}"].sha256'


def test_a_member_name_a_reader_refuses_is_quoted(
    bundle: Path, trust: list, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    def escape(m: dict[str, Any]) -> None:
        m["members"]["../escape"] = m["members"][MODEL]

    bad = resign(bundle, tmp_path / "bad.efb", keypair[0], escape)
    said = re.escape("field 'members' is invalid: key '../escape': expected `str` matching")
    with pytest.raises(ManifestError, match=said):
        read_bundle(bad, trust=trust)


def test_a_newer_manifest_schema_says_to_upgrade(
    bundle: Path, trust: list, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = resign(bundle, tmp_path / "bad.efb", keypair[0], lambda m: m.update(schema_version=2))
    with pytest.raises(ManifestError, match="upgrade edgefleet") as err:
        read_bundle(bad, trust=trust)
    assert err.value.field == "schema_version"


def test_a_wrong_size_in_a_signed_manifest_is_named(
    bundle: Path, trust: list, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = resign(
        bundle,
        tmp_path / "bad.efb",
        keypair[0],
        lambda m: m["members"][MODEL].update(size=m["members"][MODEL]["size"] + 1),
    )
    with pytest.raises(SizeMismatchError) as err:
        read_bundle(bad, trust=trust)
    assert err.value.member == MODEL


def test_a_manifest_naming_an_unlisted_member_is_invalid(
    bundle: Path, trust: list, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = resign(
        bundle, tmp_path / "bad.efb", keypair[0], lambda m: m.update(entrypoint="model/other.onnx")
    )
    with pytest.raises(ManifestError, match="entrypoint") as err:
        read_bundle(bad, trust=trust)
    assert err.value.field == "entrypoint"


def test_truncated_and_foreign_files_are_format_errors(
    bundle: Path, trust: list, tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated.efb"
    truncated.write_bytes(bundle.read_bytes()[:2000])
    with pytest.raises(BundleFormatError):
        read_bundle(truncated, trust=trust)
    gz = tmp_path / "bundle.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        tf.addfile(*regular("manifest.json", b"{}")[:1], io.BytesIO(b"{}"))
    with pytest.raises(BundleFormatError, match="uncompressed tar"):
        read_bundle(gz, trust=trust)
    with pytest.raises(BundleFormatError, match="does not exist"):
        read_bundle(tmp_path / "nope.efb", trust=trust)
    not_ours = rewrite_tar(bundle, tmp_path / "plain.tar", lambda m: [regular("readme", b"hi")])
    with pytest.raises(BundleFormatError, match=re.escape("no manifest.json")):
        read_bundle(not_ours, trust=trust)


def test_extract_refuses_a_non_empty_directory(bundle: Path, trust: list, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("precious")
    with pytest.raises(BundleFormatError, match="non-empty"):
        read_bundle(bundle, trust=trust).extract(dest)
    assert (dest / "keep.txt").read_text() == "precious"


def test_a_member_changed_after_verification_is_caught_on_read(bundle: Path, trust: list) -> None:
    verified = read_bundle(bundle, trust=trust)
    flip_byte(bundle, MODEL)
    with pytest.raises(HashMismatchError):
        verified.read_member(MODEL)


def test_the_writer_refuses_files_that_do_not_match_the_manifest(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    files = bundle_files()
    manifest = make_manifest(files)
    key = load_private_key(keypair[0])
    partial = {k: v for k, v in files.items() if k != "reference/stats.json"}
    with pytest.raises(MissingMemberError, match=re.escape("reference/stats.json")):
        write_bundle(tmp_path / "x.efb", manifest, partial, signing_key=key)
    model = files[MODEL].content
    assert isinstance(model, bytes)
    shorter = {**files, MODEL: BundleFile(b"not the model", MemberRole.MODEL)}
    with pytest.raises(SizeMismatchError, match="describe_members"):
        write_bundle(tmp_path / "x.efb", manifest, shorter, signing_key=key)
    same_size = {**files, MODEL: BundleFile(bytes(len(model)), MemberRole.MODEL)}
    with pytest.raises(HashMismatchError, match="changed while"):
        write_bundle(tmp_path / "x.efb", manifest, same_size, signing_key=key)
    assert not list(tmp_path.glob("*.efb"))
    assert not list(tmp_path.glob(".*partial"))

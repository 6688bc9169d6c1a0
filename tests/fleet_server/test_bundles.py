"""Bundles: signed uploads, the model catalogue, lifecycle and downloads, on SQLite and PostgreSQL.

Every bundle is real (built and signed by `tests.edge_agent.agent_bundles.build`),
and the last test has the agent's own downloader fetch one from a real uvicorn.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import stat
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from fastapi.testclient import TestClient

from edge_agent.bundle import ModelId, write_bundle
from edge_agent.bundle.manifest import Benchmark, Validation
from edge_agent.bundle.signature import make_signature
from edge_agent.keys import load_private_key, write_keypair
from edge_agent.swap.download import download
from fleet_server.app import create_app
from fleet_server.bundles import bundle_for, signed_download_url, version_by
from fleet_server.bundles.ranges import plan_range
from fleet_server.bundles.storage import BundleStore
from fleet_server.db import Database
from fleet_server.errors import TooLargeError
from fleet_server.settings import Settings
from tests.edge_agent.agent_bundles import build
from tests.edge_agent.bundles import bundle_files, make_manifest, regular, rewrite_tar
from tests.fleet_server.app import ADMIN, as_token, fleet_client

OCTETS = {"Content-Type": "application/octet-stream"}


def upload(client: TestClient | httpx2.Client, path: Path, **headers: str) -> httpx2.Response:
    return client.post("/api/v1/bundles", content=path.read_bytes(), headers={**OCTETS, **headers})


def stored(data_dir: Path) -> list[Path]:
    """Every file under the bundle store, staging area included."""
    root = data_dir / "bundles"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def figured(path: Path, private_key: Path, *, version: str, profile: str) -> Path:
    """A bundle whose manifest carries the converter's validation and benchmark figures."""
    files = bundle_files()
    manifest = make_manifest(
        files,
        model=ModelId(name="tiny", version=version, description="a test model"),
        profile=profile,
        validation=Validation(
            samples=64,
            metrics={"top1_agreement": 0.98},
            budget={"top1_agreement": 0.95},
            passed=True,
        ),
        benchmark=Benchmark(latency_ms_p50=1.5, latency_ms_p95=2.25, runs=200, threads=1),
    )
    return write_bundle(path, manifest, files, signing_key=load_private_key(private_key))


def middle_of_the_model(path: Path) -> int:
    """An offset inside the model member's data (a tar ends in padding: cut there, and the
    bundle is still whole)."""
    with tarfile.open(path, "r:") as tf:
        model = tf.getmember("model/model.onnx")
        return model.offset_data + model.size // 2


def test_upload_catalogue_and_lifecycle(
    tmp_path: Path, db_url: str, keypair: tuple[Path, Path]
) -> None:
    private, public = keypair
    data = tmp_path / "fleet"
    first = build(tmp_path / "a.efb", private, version="1.0.0", profile="x86-64")
    other = build(tmp_path / "b.efb", private, version="1.0.0", profile="x86-64", seed=7)
    arm = figured(tmp_path / "c.efb", private, version="1.0.0", profile="rpi4-arm64")
    sha = hashlib.sha256(first.read_bytes()).hexdigest()
    with fleet_client(data, db_url, trusted_keys=(public,)) as client:
        created = upload(client, first)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["sha256"] == sha
        assert (body["model"], body["version"], body["profile"]) == ("tiny", "1.0.0", "x86-64")
        assert body["size"] == first.stat().st_size
        assert (body["precision"], body["runtime"], body["format"]) == (
            "fp32",
            "onnxruntime",
            "onnx",
        )
        assert body["uploaded_by"] == "admin"
        assert stored(data) == [data / "bundles" / sha[:2] / f"{sha}.efb"]
        assert (data / "bundles" / sha[:2] / f"{sha}.efb").read_bytes() == first.read_bytes()

        again = upload(client, first)
        assert again.status_code == 200
        assert again.json() == body

        conflict = upload(client, other)
        assert conflict.status_code == 409
        assert "already has a bundle for profile 'x86-64'" in conflict.json()["detail"]
        assert stored(data) == [data / "bundles" / sha[:2] / f"{sha}.efb"]

        figures = upload(client, arm).json()
        assert figures["validation"] == {
            "samples": 64,
            "passed": True,
            "metrics": {"top1_agreement": 0.98},
            "budget": {"top1_agreement": 0.95},
        }
        assert figures["benchmark"]["latency_ms_p50"] == 1.5
        assert figures["benchmark"]["latency_ms_p95"] == 2.25
        assert figures["model_bytes"] > 0
        assert client.get(f"/api/v1/bundles/{sha}").json() == body

        assert client.get("/api/v1/openapi.json").status_code == 200
        models = client.get("/api/v1/models").json()
        assert [(m["name"], m["versions"], m["latest_version"]) for m in models] == [
            ("tiny", 1, "1.0.0")
        ]
        model = client.get("/api/v1/models/tiny").json()
        assert [(v["version"], v["status"]) for v in model["versions"]] == [("1.0.0", "draft")]
        version = client.get("/api/v1/models/tiny/versions/1.0.0").json()
        assert [b["profile"] for b in version["bundles"]] == ["rpi4-arm64", "x86-64"]
        assert version["bundles"][0]["benchmark"]["latency_ms_p95"] == 2.25
        assert client.get("/api/v1/models/nope").status_code == 404
        missing = client.get("/api/v1/models/tiny/versions/9.9.9")
        assert missing.status_code == 404
        assert missing.json()["field"] == "version"

        # lifecycle: draft -> active -> archived, never back
        url = "/api/v1/models/tiny/versions/1.0.0"
        bad = client.patch(url, json={"status": "released"})
        assert (bad.status_code, bad.json()["field"]) == (422, "status")
        extra = client.patch(url, json={"status": "active", "force": True})
        assert (extra.status_code, extra.json()["field"]) == (422, "force")
        assert client.patch(url, json={"status": "active"}).json()["status"] == "active"
        back = client.patch(url, json={"status": "draft"})
        assert back.status_code == 409
        assert "is active; it can become archived, not draft" in back.json()["detail"]

        db = Database(db_url)
        try:
            with db.session() as session:
                found = bundle_for(session, "tiny", "1.0.0", "x86-64")
                assert found is not None
                assert found.sha256 == sha
                assert bundle_for(session, "tiny", "1.0.0", "jetson-orin") is None
                assert bundle_for(session, "tiny", "2.0.0", "x86-64") is None
            assert client.patch(url, json={"status": "archived"}).json()["status"] == "archived"
            with db.session() as session:
                row = version_by(session, "tiny", "1.0.0")
                assert row is not None
                assert row.status == "archived"
                assert bundle_for(session, "tiny", "1.0.0", "x86-64") is None  # never targeted
        finally:
            db.dispose()
        final = client.patch(url, json={"status": "active"})
        assert final.status_code == 409
        assert "archived is final" in final.json()["detail"]
        late = upload(client, build(tmp_path / "d.efb", private, version="1.0.0", profile="jetson"))
        assert late.status_code == 409
        assert "archived" in late.json()["detail"]

        viewer = client.post("/api/v1/tokens", json={"name": "vic", "role": "viewer"}).json()
        refused = upload(client, first, **as_token(client, viewer["token"]))
        assert refused.status_code == 403
        assert (
            client.get("/api/v1/models", headers=as_token(client, viewer["token"])).status_code
            == 200
        )

        audit = [(e["action"], e["target"]) for e in client.get("/api/v1/audit").json()]
        assert ("bundle.upload", sha) in audit
        assert audit.count(("bundle.upload", sha)) == 1  # the idempotent repeat changed nothing
        assert ("model_version.status", "tiny@1.0.0") in audit


def test_refused_uploads_say_what_failed_and_keep_nothing(
    tmp_path: Path, db_url: str, keypair: tuple[Path, Path]
) -> None:
    private, public = keypair
    stranger_private, _ = tmp_path / "other.pem", tmp_path / "other.pub"
    write_keypair(stranger_private, tmp_path / "other.pub")
    good = build(tmp_path / "good.efb", private, version="1.0.0")
    foreign = build(tmp_path / "foreign.efb", stranger_private, version="1.0.0")

    def forge(members: list[tuple[object, bytes]]) -> list[tuple[object, bytes]]:
        out = []
        for info, content in members:
            name = getattr(info, "name", "")
            if name == "signature.json":  # a signature by the trusted key, over other bytes
                content = make_signature(load_private_key(private), b"another manifest")
                info = regular(name, content)[0]
            out.append((info, content))
        return out

    forged = rewrite_tar(good, tmp_path / "forged.efb", forge)  # type: ignore[arg-type]
    data = tmp_path / "fleet"
    with fleet_client(data, db_url, trusted_keys=(public,), max_bundle_bytes=1 << 20) as client:
        untrusted = upload(client, foreign)
        assert untrusted.status_code == 422
        assert untrusted.json()["error"] == "bundle_rejected"
        assert untrusted.json()["detail"].startswith(
            "untrusted signing key: bundle is signed by key"
        )

        bad_sig = upload(client, forged)
        assert bad_sig.status_code == 422
        assert bad_sig.json()["detail"].startswith("bad signature: manifest.json does not match")

        half = good.read_bytes()[: middle_of_the_model(good)]
        truncated = client.post("/api/v1/bundles", content=half, headers=OCTETS)
        assert truncated.status_code == 422
        detail = truncated.json()["detail"]
        assert detail.startswith("truncated or not a bundle:")
        assert str(data) not in detail  # the staging path is the server's business

        garbage = client.post("/api/v1/bundles", content=b"x" * 4096, headers=OCTETS)
        assert garbage.status_code == 422
        assert "not a bundle" in garbage.json()["detail"]

        empty = client.post("/api/v1/bundles", content=b"", headers=OCTETS)
        assert (empty.status_code, empty.json()["field"]) == (422, "body")

        form = client.post("/api/v1/bundles", files={"file": ("a.efb", good.read_bytes())})
        assert form.status_code == 422
        assert "not a form" in form.json()["detail"]

        assert stored(data) == []
        assert client.get("/api/v1/models").json() == []

    with fleet_client(data, db_url, trusted_keys=(public,), max_bundle_bytes=10_000) as client:
        declared = upload(client, good)
        assert declared.status_code == 413
        assert declared.json()["error"] == "too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is found while streaming
            content = good.read_bytes()
            for i in range(0, len(content), 4096):
                yield content[i : i + 4096]

        streamed = client.post("/api/v1/bundles", content=chunks(), headers=OCTETS)
        assert streamed.status_code == 413
        assert "10000 bytes" in streamed.json()["detail"]
        assert stored(data) == []

    with fleet_client(data, db_url) as client:  # a server trusting no key takes no bundle
        unconfigured = upload(client, good)
        assert unconfigured.status_code == 503
        assert "trusted_keys" in unconfigured.json()["detail"]
        assert stored(data) == []


def test_downloads_by_token_or_signed_url_with_ranges(
    tmp_path: Path, db_url: str, keypair: tuple[Path, Path]
) -> None:
    private, public = keypair
    bundle = build(tmp_path / "a.efb", private, version="1.0.0")
    content = bundle.read_bytes()
    size, sha = len(content), hashlib.sha256(content).hexdigest()
    data = tmp_path / "fleet"
    with fleet_client(data, db_url, trusted_keys=(public,)) as client:
        assert upload(client, bundle).status_code == 201
        path = f"/api/v1/bundles/{sha}/download"

        full = client.get(path)
        assert full.status_code == 200
        assert full.content == content
        assert full.headers["etag"] == f'"{sha}"'
        assert full.headers["accept-ranges"] == "bytes"
        assert full.headers["content-length"] == str(size)

        part = client.get(path, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206
        assert part.content == content[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{size}"
        tail = client.get(path, headers={"Range": f"bytes={size - 100}-", "If-Range": f'"{sha}"'})
        assert (tail.status_code, tail.content) == (206, content[-100:])
        suffix = client.get(path, headers={"Range": "bytes=-7"})
        assert (suffix.status_code, suffix.content) == (206, content[-7:])

        changed = client.get(path, headers={"Range": "bytes=100-", "If-Range": '"0000"'})
        assert (changed.status_code, changed.content) == (200, content)
        beyond = client.get(path, headers={"Range": f"bytes={size}-"})
        assert beyond.status_code == 416
        assert beyond.headers["content-range"] == f"bytes */{size}"

        anonymous = client.get(path, headers=as_token(client, None))
        assert anonymous.status_code == 401
        assert client.get(f"/api/v1/bundles/{'0' * 64}/download").status_code == 404
        bad = client.get("/api/v1/bundles/not-a-sha/download")
        assert (bad.status_code, bad.json()["field"]) == (422, "sha256")

        settings = client.app.state.fleet.settings  # type: ignore[attr-defined]
        now = datetime.now(UTC)
        url = signed_download_url(settings, sha, "dev-001", now)
        assert url.startswith(f"http://127.0.0.1:8080/api/v1/bundles/{sha}/download?")
        split = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        assert int(query["expires"]) == int(now.timestamp()) + settings.download_url_ttl_s
        signed = client.get(f"{split.path}?{split.query}", headers=as_token(client, None))
        assert signed.status_code == 200
        assert signed.content == content
        ranged = client.get(
            f"{split.path}?{split.query}",
            headers={**as_token(client, None), "Range": "bytes=5-", "If-Range": f'"{sha}"'},
        )
        assert (ranged.status_code, ranged.content) == (206, content[5:])

        secret = data / "url-secret"  # no secret configured: the server made its own
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600

        def fetch(**changes: str) -> httpx2.Response:
            return client.get(
                f"{split.path}?{urlencode({**query, **changes})}", headers=as_token(client, None)
            )

        expired_url = signed_download_url(settings, sha, "dev-001", now - timedelta(hours=2))
        expired = client.get(
            expired_url.removeprefix(settings.public_url), headers=as_token(client, None)
        )
        assert expired.status_code == 403
        assert "expired" in expired.json()["detail"]
        for tampered in ({"device": "dev-002"}, {"expires": str(int(query["expires"]) + 3600)}):
            refused = fetch(**tampered)
            assert refused.status_code == 403
            assert "signature does not match" in refused.json()["detail"]
        other = fetch(sig="0" * 64)
        assert other.status_code == 403
        missing = client.get(
            f"{split.path}?{urlencode({'device': 'dev-001', 'sig': query['sig']})}",
            headers=as_token(client, None),
        )
        assert (missing.status_code, missing.json()["field"]) == (422, "expires")

    # the secret survives a restart, so outstanding URLs stay valid
    with fleet_client(data, db_url, trusted_keys=(public,)) as client:
        again = client.get(f"{split.path}?{split.query}", headers=as_token(client, None))
        assert again.status_code == 200


@pytest.mark.parametrize(
    ("range_header", "if_range", "expected"),
    [
        (None, None, (200, 0, 100)),
        ("bytes=0-0", None, (206, 0, 1)),
        ("bytes=90-200", None, (206, 90, 100)),
        ("bytes=-200", None, (206, 0, 100)),
        ("bytes=100-", None, (416, 0, 0)),
        ("bytes=-0", None, (416, 0, 0)),
        ("bytes=5-2", None, (200, 0, 100)),  # invalid: ignored
        ("bytes=0-1,5-6", None, (200, 0, 100)),  # several: the whole file
        ("items=0-1", None, (200, 0, 100)),
        ("bytes=10-", '"abc"', (206, 10, 100)),
        ("bytes=10-", '"abd"', (200, 0, 100)),
        ("bytes=10-", "Mon, 23 Nov 2026 17:00:00 GMT", (200, 0, 100)),
    ],
)
def test_range_plan(
    range_header: str | None, if_range: str | None, expected: tuple[int, int, int]
) -> None:
    plan = plan_range(100, range_header=range_header, if_range=if_range, etag='"abc"')
    assert (plan.status, plan.start, plan.end) == expected


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The fleet app on a real uvicorn, in a thread, on a free port."""
    import uvicorn

    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=int(urlsplit(settings.public_url).port or 0),
        log_level="warning",
        ws="none",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in 20 s"
        time.sleep(0.02)
    try:
        yield settings.public_url
    finally:
        server.should_exit = True
        thread.join(10)


def test_agent_downloads_a_signed_url_and_resumes_a_part(
    tmp_path: Path, db_url: str, keypair: tuple[Path, Path]
) -> None:
    private, public = keypair
    bundle = build(tmp_path / "a.efb", private, version="1.0.0")
    content = bundle.read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    settings = Settings(
        data_dir=tmp_path / "fleet",
        db_url=db_url,
        admin_token=ADMIN,
        trusted_keys=(public,),
        public_url=f"http://127.0.0.1:{_free_port()}",
        url_signing_secret=os.urandom(32),
        embedded_mqtt_port=0,
    )
    with serving(settings) as base, httpx2.Client(base_url=base) as http:
        stored_ = upload(http, bundle, Authorization=f"Bearer {ADMIN}")
        assert stored_.status_code == 201, stored_.text
        url = signed_download_url(settings, sha, "dev-001", datetime.now(UTC))

        whole = download(url, tmp_path / "dl" / "whole.efb", size=len(content), sha256=sha)
        assert whole.read_bytes() == content

        # an earlier attempt died halfway, after it recorded the ETag: resume from there
        dest = tmp_path / "dl" / "resumed.efb"
        half = len(content) // 2
        dest.with_name("resumed.efb.part").write_bytes(content[:half])
        meta = {"url": url.split("?")[0], "sha256": sha, "etag": f'"{sha}"', "last_modified": None}
        dest.with_name("resumed.efb.part.meta").write_text(json.dumps(meta))
        requests: list[int] = []
        download(
            url,
            dest,
            size=len(content),
            sha256=sha,
            progress=lambda done, total: requests.append(done),
        )
        assert dest.read_bytes() == content
        assert requests[0] > half  # the first chunk continued the part, nothing refetched
        assert not dest.with_name("resumed.efb.part").exists()

        # an upload cut off mid-body (the client died): refused, nothing kept
        port = int(urlsplit(base).port or 0)
        incoming = settings.bundles_dir / ".incoming"
        other = build(tmp_path / "b.efb", private, version="2.0.0").read_bytes()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (
                f"POST /api/v1/bundles HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {ADMIN}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(other)}\r\n\r\n"
            )
            sock.sendall(head.encode() + other[: len(other) // 2])
            wait_for(lambda: any(incoming.glob("*.part")), "the upload to be staged")
        wait_for(lambda: not any(incoming.glob("*.part")), "the cut-off upload to be discarded")
        versions = http.get("/api/v1/models/tiny", headers={"Authorization": f"Bearer {ADMIN}"})
        assert [v["version"] for v in versions.json()["versions"]] == ["1.0.0"]

        # a part of another file (stale ETag): the server sends it whole, the agent starts over
        stale = tmp_path / "dl" / "stale.efb"
        stale.with_name("stale.efb.part").write_bytes(b"\0" * half)
        stale.with_name("stale.efb.part.meta").write_text(json.dumps({**meta, "etag": '"old"'}))
        download(url, stale, size=len(content), sha256=sha)
        assert stale.read_bytes() == content


def test_staging_receives_in_batches_and_cleans_up_after_dead_uploads(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "bundles")
    store.incoming.mkdir(parents=True)
    dead, live = store.incoming / "dead.part", store.incoming / "live.part"
    dead.write_bytes(b"half an upload from a server that was killed")
    live.write_bytes(b"an upload still arriving")
    long_ago = time.time() - 2 * 24 * 3600
    os.utime(dead, (long_ago, long_ago))

    body = os.urandom(3 * 1024 * 1024 + 17)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    with store.stage(max_bytes=len(body)) as staged:
        assert not dead.exists()
        assert live.exists()
        asyncio.run(staged.receive(chunks()))
        assert (staged.size, staged.sha256) == (len(body), hashlib.sha256(body).hexdigest())
        assert store.keep(staged) is True
    assert store.path_of(hashlib.sha256(body).hexdigest()).read_bytes() == body
    assert sorted(p.name for p in store.incoming.iterdir()) == ["live.part"]

    with store.stage(max_bytes=len(body) - 1) as staged:
        with pytest.raises(TooLargeError, match=f"limit of {len(body) - 1} bytes"):
            asyncio.run(staged.receive(chunks()))
        assert not staged.path.exists()

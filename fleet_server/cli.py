"""`edgefleet fleet`, `provision` and `demo`: the fleet side of the command line."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import click

SWITCH_INTERVAL_S = 0.0005  # `fleet serve`'s sys.setswitchinterval (Python's default: 0.005)

_DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("fleet-data"),
    show_default=True,
    envvar="EDGEFLEET_FLEET_DATA_DIR",
    help="Where the server keeps its SQLite database and bundles.",
)
_DB = click.option(
    "--db",
    "db_url",
    default="",
    envvar="EDGEFLEET_FLEET_DB",
    help="Database URL (postgresql://user@host/db); default: SQLite in the data dir.",
)


@click.group()
def fleet() -> None:
    """Run and administer the fleet server."""


@fleet.command()
@_DATA_DIR
@_DB
@click.option(
    "--mqtt-url",
    default="",
    envvar="EDGEFLEET_FLEET_MQTT_URL",
    help="A real broker (mqtt://fleet:PASSWORD@host:1883); default: an embedded broker.",
)
@click.option("--mqtt-port", default=1883, show_default=True, help="The embedded broker's port.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public key bundles must be signed with (repeatable).",
)
@click.option(
    "--public-url",
    default="",
    help="The URL devices reach this server at (for bundle download links).",
)
@click.option(
    "--replica-id",
    default="",
    envvar="EDGEFLEET_REPLICA_ID",
    help="This replica's name among those sharing the database (default: host:data dir).",
)
@click.option(
    "--stale-after",
    type=click.FloatRange(min=0),
    default=90.0,
    show_default=True,
    envvar="EDGEFLEET_STALE_AFTER",
    help="Seconds without a message after which a device is shown offline (0: never).",
)
@click.option(
    "--trust-station",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="EDGEFLEET_FLEET_STATION_KEYS",
    help="Public key of a provisioning station whose batches POST /provisioning/batches takes.",
)
@click.option(
    "--enroll-limit",
    type=(click.IntRange(min=0), click.IntRange(min=0), click.FloatRange(min=1)),
    default=(10, 100, 60.0),
    show_default=True,
    metavar="PER_ADDRESS OVERALL WINDOW_S",
    help="Failed enrollment attempts allowed per source address and overall within "
    "WINDOW_S seconds before POST /enroll answers 429 (0: no limit).",
)
def serve(
    data_dir: Path,
    db_url: str,
    mqtt_url: str,
    mqtt_port: int,
    host: str,
    port: int,
    trust: tuple[Path, ...],
    trust_station: tuple[Path, ...],
    public_url: str,
    replica_id: str,
    stale_after: float,
    enroll_limit: tuple[int, int, float],
) -> None:
    """Serve the fleet API (and the embedded broker unless --mqtt-url is given).

    On first start with no API token in the database, an admin token is created,
    printed once and written to DATA_DIR/admin-token (mode 0600). Several replicas
    may share one PostgreSQL database and broker: see docs/scaling.md.
    """
    import logging

    import uvicorn

    from fleet_server.app import create_app
    from fleet_server.settings import Settings

    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir / "admin-token"
    admin = os.environ.get("EDGEFLEET_ADMIN_TOKEN")
    if admin is None and not token_file.exists():
        admin = f"eft_{secrets.token_urlsafe(32)}"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(admin + "\n")
        click.echo(f"admin API token (also in {token_file}): {admin}", err=True)
    elif admin is None:
        admin = token_file.read_text().strip()
    settings = Settings(
        data_dir=data_dir,
        db_url=db_url,
        mqtt_url=mqtt_url,
        embedded_mqtt_port=mqtt_port,
        public_url=public_url or f"http://{host}:{port}",
        trusted_keys=trust,
        trusted_station_keys=trust_station,
        admin_token=admin,
        replica_id=replica_id,
        stale_after_s=stale_after,
        enroll_failures_per_address=enroll_limit[0],
        enroll_failures_overall=enroll_limit[1],
        enroll_failure_window_s=enroll_limit[2],
    )
    # the server's own log (leadership, rollout orders, ingestion) next to uvicorn's
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    server_log = logging.getLogger("fleet_server")
    server_log.addHandler(handler)
    server_log.setLevel(logging.INFO)
    server_log.propagate = False
    # the GIL changes hands every 0.5 ms instead of 5: a thread that gives it up for each
    # socket call (the broker link writing a rollout's thousand orders) otherwise waits up
    # to 5 ms to get it back after each while ingestion stores the devices' replies
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@fleet.command("broker-config")
@_DATA_DIR
@_DB
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write mosquitto.conf, passwd, fleet-passwd and acl into.",
)
@click.option("--port", default=1883, show_default=True, help="The devices' listener port.")
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    help="The devices' listener address (0.0.0.0: every interface, for devices elsewhere).",
)
@click.option(
    "--fleet-port",
    default=1884,
    show_default=True,
    help="The fleet servers' listener port (their --mqtt-url).",
)
@click.option(
    "--fleet-bind", default="127.0.0.1", show_default=True, help="The fleet listener's address."
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The broker's TLS certificate (PEM): the devices' listener speaks mqtts://.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Its private key (PEM).",
)
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The CA that signed the certificate (devices trust it; client certificates too).",
)
@click.option(
    "--require-client-cert",
    is_flag=True,
    help="Devices must also present a certificate signed by --tls-ca.",
)
@click.option(
    "--fleet-password",
    envvar="EDGEFLEET_FLEET_MQTT_PASSWORD",
    help="Password of the 'fleet' user the server connects as (default: generated, printed).",
)
def broker_config(
    data_dir: Path,
    db_url: str,
    out: Path,
    port: int,
    bind: str,
    fleet_port: int,
    fleet_bind: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    require_client_cert: bool,
    fleet_password: str | None,
) -> None:
    """Write a Mosquitto config: every enrolled device's credentials, ACLs confining each
    device to its own topics, and queue limits set on purpose (see docs/protocol.md).

    Devices connect on --port, where a client's id is its username (no device can take
    another's session); fleet servers on --fleet-port. Both bind loopback unless told
    otherwise; --tls-cert, --tls-key and --tls-ca make the devices' listener TLS."""
    from sqlalchemy import select

    from fleet_server.broker.mosquitto import (
        FleetListener,
        MosquittoConfig,
        TlsFiles,
        hash_password,
        render_acl,
        render_hashed_password_file,
    )
    from fleet_server.db import Database
    from fleet_server.db.tables import Device
    from fleet_server.settings import Settings

    given = [f for f in (tls_cert, tls_key, tls_ca) if f is not None]
    if given and len(given) != 3:
        raise click.UsageError("a TLS listener needs all of --tls-cert, --tls-key and --tls-ca")
    if require_client_cert and not given:
        raise click.UsageError("--require-client-cert needs a TLS listener (--tls-cert ...)")
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=data_dir, db_url=db_url)
    db = Database(settings.database_url)
    try:
        db.migrate()
        with db.session() as session:
            hashes = {
                d.id: d.credential_hash
                for d in session.scalars(select(Device).order_by(Device.id))
                if d.credential_hash
            }
    finally:
        db.dispose()
    generated = fleet_password is None
    password = fleet_password or secrets.token_urlsafe(24)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("passwd", render_hashed_password_file(hashes)),
        ("fleet-passwd", render_hashed_password_file({"fleet": hash_password(password)})),
        ("acl", render_acl(fleet_users=["fleet"])),
    ):
        path = out / name
        path.write_text(text)
        path.chmod(0o600)
    config = MosquittoConfig(
        port=port,
        bind_address=bind,
        password_file=(out / "passwd").resolve(),
        acl_file=(out / "acl").resolve(),
        persistence_dir=(out / "data").resolve(),
        username_as_client_id=True,
        tls=None
        if tls_cert is None or tls_key is None or tls_ca is None
        else TlsFiles(
            tls_cert.resolve(),
            tls_key.resolve(),
            tls_ca.resolve(),
            require_certificate=require_client_cert,
        ),
        fleet_listener=FleetListener(
            port=fleet_port,
            bind_address=fleet_bind,
            password_file=(out / "fleet-passwd").resolve(),
            acl_file=(out / "acl").resolve(),
        ),
    )
    (out / "data").mkdir(exist_ok=True)
    (out / "mosquitto.conf").write_text(config.render())
    click.echo(
        f"wrote {out}/mosquitto.conf, passwd ({len(hashes)} devices), fleet-passwd (fleet) "
        f"and acl; devices on {'mqtts' if given else 'mqtt'}://{bind}:{port}, "
        f"fleet servers on mqtt://{fleet_bind}:{fleet_port}"
    )
    if generated:
        click.echo(f"fleet user password (give it to `fleet serve --mqtt-url`): {password}")


@fleet.command("token")
@_DATA_DIR
@_DB
@click.option("--name", required=True, help="Who or what uses the token.")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
def token(data_dir: Path, db_url: str, name: str, role: str) -> None:
    """Create an API token directly in the database; it is printed once."""
    from fleet_server.auth import Role, create_api_token
    from fleet_server.db import Database
    from fleet_server.errors import FleetError
    from fleet_server.settings import Settings

    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(Settings(data_dir=data_dir, db_url=db_url).database_url)
    try:
        db.migrate()
        with db.session() as session:
            secret = create_api_token(session, name=name, role=Role(role))
    except FleetError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
    click.echo(secret)


@fleet.command("import-batch")
@click.argument("batch_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_DATA_DIR
@_DB
@click.option(
    "--trust-station",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="EDGEFLEET_FLEET_STATION_KEYS",
    help="Public key of a provisioning station whose batches this fleet accepts (repeatable).",
)
def import_batch(
    batch_file: Path, data_dir: Path, db_url: str, trust_station: tuple[Path, ...]
) -> None:
    """Register the devices of an offline provisioning batch (its signature checked).

    Importing a batch twice changes nothing; a tampered or unsigned batch is refused.
    """
    from datetime import UTC, datetime

    from edge_agent.keys import load_trusted_keys
    from fleet_server.auth import Actor, Role
    from fleet_server.db import Database
    from fleet_server.provisioning import import_batch as register
    from fleet_server.settings import Settings

    trusted = load_trusted_keys(list(trust_station))
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(Settings(data_dir=data_dir, db_url=db_url).database_url)
    try:
        db.migrate()
        with db.session() as session:
            result = register(
                session,
                batch_file,
                trusted=trusted,
                actor=Actor(name=f"cli:{os.environ.get('USER', 'unknown')}", role=Role.ADMIN),
                now=datetime.now(UTC),
            )
    finally:
        db.dispose()
    click.echo(
        f"batch {result.batch_id}: {len(result.created)} devices registered, "
        f"{len(result.unchanged)} registered already"
    )


def _home(*parts: str) -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")).joinpath(*parts)


def _cache(*parts: str) -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).joinpath(*parts)


@click.command()
@click.option(
    "--csv",
    "csv_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Devices to make: columns serial,profile,labels (labels as key=value;key=value).",
)
@click.option("--count", type=int, help="Or this many devices of --profile, with new serials.")
@click.option("--profile", help="The hardware profile of --count devices.")
@click.option("--labels", default="", help="Labels of --count devices (key=value;key=value).")
@click.option(
    "--trust",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public key the fleet signs bundles with (repeatable); devices trust these.",
)
@click.option(
    "--bundle",
    "bundles",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The first bundle, one per profile of the batch (repeatable).",
)
@click.option("--offline", is_flag=True, help="Record credentials in a signed batch file.")
@click.option("--fleet", "fleet_url", help="Online: the fleet server's URL (enrolls each device).")
@click.option("--token", envvar="EDGEFLEET_ENROLLMENT_TOKEN", help="Online: an enrollment token.")
@click.option(
    "--mqtt-url",
    default="",
    envvar="EDGEFLEET_PROVISION_MQTT_URL",
    help="Offline: the broker the devices connect to (mqtts://fleet.example:8883).",
)
@click.option(
    "--station-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: _home("edgefleet", "station.key"),
    envvar="EDGEFLEET_STATION_KEY",
    show_default="~/.config/edgefleet/station.key, created on first use",
    help="Offline: the station's Ed25519 key the batch file is signed with.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where each DEVICE.tar.gz, DEVICE.ext4, the report and the batch file go.",
)
@click.option(
    "--wheelhouse",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: _cache("edgefleet", "wheelhouse"),
    envvar="EDGEFLEET_WHEELHOUSE",
    show_default="~/.cache/edgefleet/wheelhouse",
    help="The agent's wheels per target platform, downloaded once.",
)
@click.option(
    "--python-version",
    default="3.11",
    show_default=True,
    help="The devices' Python (the wheels are picked for it).",
)
@click.option(
    "--agent-layer",
    type=click.Choice(["embed", "shared"]),
    default="embed",
    show_default=True,
    help="embed: /opt/edgefleet in every overlay; shared: once, in OUT/layers/.",
)
@click.option(
    "--agent-wheel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An edgefleet wheel to install (default: built from this source tree).",
)
@click.option("--force", is_flag=True, help="Make new identities for devices made already.")
@click.option("--jobs", default=0, help="Devices written in parallel (0: one per CPU).")
def provision(
    csv_file: Path | None,
    count: int | None,
    profile: str | None,
    labels: str,
    trust: tuple[Path, ...],
    bundles: tuple[Path, ...],
    offline: bool,
    fleet_url: str | None,
    token: str | None,
    mqtt_url: str,
    station_key: Path,
    out: Path,
    wheelhouse: Path,
    python_version: str,
    agent_layer: str,
    agent_wheel: Path | None,
    force: bool,
    jobs: int,
) -> None:
    """Provision devices in bulk: identity, agent and first model, online or offline.

    \b
    edgefleet provision --csv line3.csv --trust fleet.pub --bundle digits-rpi4.efb \\
        --offline --mqtt-url mqtts://fleet.example:8883 --out out/
    edgefleet provision --count 20 --profile raspberry-pi-4 --trust fleet.pub \\
        --bundle digits-rpi4.efb --fleet https://fleet.example --token efe_... --out out/

    Writes OUT/DEVICE.tar.gz and OUT/DEVICE.ext4 per device, OUT/batch-ID.report.json
    (device ids, serials, public-key fingerprints) and, offline, the signed
    OUT/batch-ID.json for `edgefleet fleet import-batch`. See docs/provisioning.md.
    """
    from fleet_server.provisioning import BatchRequest, plan_count, provision_batch, read_csv
    from fleet_server.provisioning.plan import parse_labels

    if (csv_file is None) == (count is None):
        raise click.UsageError("give either --csv FILE or --count N --profile P")
    if count is not None and not profile:
        raise click.UsageError("--count needs --profile")
    online = fleet_url is not None or token is not None
    if offline == online:
        raise click.UsageError("give either --offline or --fleet URL --token TOKEN")
    if online and not (fleet_url and token):
        raise click.UsageError("online provisioning needs both --fleet URL and --token TOKEN")
    plan = (
        read_csv(csv_file)
        if csv_file is not None
        else plan_count(
            count or 0, profile=profile or "", labels=parse_labels(labels, where="--labels")
        )
    )
    if offline and not mqtt_url:
        click.echo(
            "warning: no --mqtt-url: the devices will stay offline until mqtt.url is set",
            err=True,
        )
    result = provision_batch(
        BatchRequest(
            plan=plan,
            out=out,
            trust=list(trust),
            bundles=list(bundles),
            wheelhouse=wheelhouse,
            station_key=station_key if offline else None,
            mqtt_url=mqtt_url,
            fleet_url=fleet_url,
            token=token,
            python_version=python_version,
            agent_layer="shared" if agent_layer == "shared" else "embed",
            agent_wheel=agent_wheel,
            force=force,
            jobs=jobs,
        )
    )
    click.echo(f"provisioned {len(result.devices)} devices in {out} (batch {result.batch_id})")
    click.echo(f"report: {result.report}")
    for layer in result.layers:
        click.echo(f"shared agent layer: {layer}")
    if result.batch_file is not None:
        click.echo(
            f"batch file: {result.batch_file}; on the fleet: edgefleet fleet import-batch "
            f"{result.batch_file.name} --trust-station {station_key.with_suffix('.pub')}"
        )


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A block device (/dev/sdX, /dev/mmcblk0) or a file.",
)
def flash(image: Path, target: Path) -> None:
    """Write IMAGE to a block device or a file and verify it by reading it back.

    A mounted target (or one with a mounted partition) and the disk the running
    system is on are refused before anything is written.
    """
    from fleet_server.provisioning import flash as write_image

    result = write_image(image, target)
    click.echo(
        f"wrote {result.size} bytes to {target} in {result.seconds:.1f} s; "
        f"read back sha256 {result.sha256} (matches {image.name})"
    )


@click.command()
@click.option("--devices", default=20, show_default=True, help="Agents to start.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("edgefleet-demo"),
    show_default=True,
    help="Models, bundles, the fleet's data and each device's files.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, help="The fleet API and console (0: any).")
@click.option(
    "--mqtt-url",
    default="",
    help="A real broker (mqtt://fleet:PASSWORD@host:1883); default: embedded.",
)
@click.option("--rate", default=10.0, show_default=True, help="Requests per second per device.")
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    help="Convert for and run devices of this profile (repeatable); default: every profile "
    "this machine can stand in for.",
)
@click.option(
    "--headless", is_flag=True, help="Run to completion and exit; do not wait for Ctrl-C."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def demo(
    devices: int,
    work_dir: Path,
    host: str,
    port: int,
    mqtt_url: str,
    rate: float,
    profiles: tuple[str, ...],
    headless: bool,
    as_json: bool,
) -> None:
    """Run the whole kit on this machine: train, convert, serve, enroll agents, roll out.

    A fleet server with its console, DEVICES real agent processes with live
    traffic (one cohort drifting), a staged rollout of v2 and a broken v3 that
    the gates roll back. Without --headless it then keeps running until Ctrl-C.
    """
    import json
    import signal
    import threading

    from fleet_server.demo import DemoOptions, run_demo

    if devices < 2:
        raise click.BadParameter("the demo needs at least 2 devices", param_hint="--devices")

    def say(line: str) -> None:
        click.echo(line, err=as_json)

    def emit(report: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(report, sort_keys=True))

    def hold(report: dict[str, Any]) -> None:
        emit(report)
        click.echo(
            f"\nconsole: {report['console']}  (log in with the token in "
            f"{report['admin_token_file']})\neverything keeps running; Ctrl-C stops it all",
            err=as_json,
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        click.echo("stopping the agents and the fleet server", err=True)

    options = DemoOptions(
        work_dir=work_dir,
        devices=devices,
        profiles=profiles,
        host=host,
        port=port,
        mqtt_url=mqtt_url,
        rate_hz=rate,
    )
    report = run_demo(options, say=say, hold=None if headless else hold)
    if headless:
        emit(report)

"""`edgefleet fleet`, `provision` and `demo`: the fleet side of the command line."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import click

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
def serve(
    data_dir: Path,
    db_url: str,
    mqtt_url: str,
    mqtt_port: int,
    host: str,
    port: int,
    trust: tuple[Path, ...],
    public_url: str,
) -> None:
    """Serve the fleet API (and the embedded broker unless --mqtt-url is given).

    On first start with no API token in the database, an admin token is created,
    printed once and written to DATA_DIR/admin-token (mode 0600).
    """
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
        admin_token=admin,
    )
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@fleet.command("broker-config")
@_DATA_DIR
@_DB
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write mosquitto.conf, passwd and acl into.",
)
@click.option("--port", default=1883, show_default=True, help="The broker's listener port.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="The listener's address.")  # noqa: S104 devices connect over the network
@click.option(
    "--fleet-password",
    envvar="EDGEFLEET_FLEET_MQTT_PASSWORD",
    help="Password of the 'fleet' user the server connects as (default: generated, printed).",
)
def broker_config(
    data_dir: Path, db_url: str, out: Path, port: int, bind: str, fleet_password: str | None
) -> None:
    """Write a Mosquitto config: every enrolled device's credentials, ACLs confining each
    device to its own topics, and queue limits set on purpose (see docs/protocol.md)."""
    from sqlalchemy import select

    from fleet_server.broker.mosquitto import (
        MosquittoConfig,
        hash_password,
        render_acl,
        render_hashed_password_file,
    )
    from fleet_server.db import Database
    from fleet_server.db.tables import Device
    from fleet_server.settings import Settings

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
    hashes["fleet"] = hash_password(password)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("passwd", render_hashed_password_file(hashes)),
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
    )
    (out / "data").mkdir(exist_ok=True)
    (out / "mosquitto.conf").write_text(config.render())
    click.echo(f"wrote {out}/mosquitto.conf, passwd ({len(hashes) - 1} devices + fleet) and acl")
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


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def provision(args: tuple[str, ...]) -> None:
    """Provision devices in bulk (identity, agent, first model).

    Not available yet: arrives with the factory provisioning issue (#8).
    """
    raise click.UsageError("`edgefleet provision` arrives with factory provisioning (issue #8)")


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
        work_dir=work_dir, devices=devices, host=host, port=port, mqtt_url=mqtt_url, rate_hz=rate
    )
    report = run_demo(options, say=say, hold=None if headless else hold)
    if headless:
        emit(report)

"""Broker identity and TLS on a real Mosquitto, configured as `broker-config` writes it:
a device cannot take over another's client id (and the victim keeps its queued QoS 1
command), the ACL of every channel for device and fleet identities, TLS with a wrong CA
refused."""

from __future__ import annotations

import queue
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.protocol import topics
from fleet_server.broker.mosquitto import (
    FleetListener,
    TlsFiles,
    render_acl,
    render_password_file,
)
from tests.harness.mosquitto import Mosquitto, free_port
from tests.harness.mqtt import Client

USERS = {"dev-a": "pw-a", "dev-b": "pw-b"}
FLEET = {"fleet": "pw-fleet"}


def broker(root: Path, *, tls: TlsFiles | None = None) -> Mosquitto:
    """A Mosquitto with the devices' listener (client id = username) and the fleet's."""
    server = Mosquitto(root)
    for name, users in (("passwd", USERS), ("fleet-passwd", FLEET)):
        (root / name).write_text(render_password_file(users))
        (root / name).chmod(0o600)
    (root / "acl").write_text(render_acl(fleet_users=list(FLEET)))
    config = replace(
        server.config,
        password_file=root / "passwd",
        acl_file=root / "acl",
        username_as_client_id=True,
        tls=tls,
        fleet_listener=FleetListener(
            port=free_port(), password_file=root / "fleet-passwd", acl_file=root / "acl"
        ),
    )
    server.config = config
    server.conf_path.write_text(config.render())
    return server


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    server = broker(tmp_path / "broker")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def fleet_port(server: Mosquitto) -> int:
    assert server.config.fleet_listener is not None
    return server.config.fleet_listener.port


def connected(client: Client) -> Client:
    client.connect()
    return client


def test_a_device_cannot_take_over_another_client_id(mosquitto: Mosquitto) -> None:
    command = topics.topic("dev-a", topics.Channel.COMMANDS)
    victim = connected(
        Client(mosquitto.port, "dev-a", username="dev-a", password="pw-a", session_expiry_s=600)
    )
    victim.client.subscribe(command, qos=1)
    assert victim.subscribe_granted.get(timeout=5)[0].value == 1
    victim.client.disconnect()
    victim.client.loop_stop()

    # dev-b connects with dev-a's client id: the broker names it dev-b instead
    thief = connected(
        Client(mosquitto.port, "dev-a", username="dev-b", password="pw-b", session_expiry_s=600)
    )
    assert not thief.connect_reason.is_failure
    thief.client.subscribe(command, qos=1)  # and dev-a's topics stay closed to it
    fleet = connected(
        Client(fleet_port(mosquitto), "fleet-1", username="fleet", password="pw-fleet")
    )
    fleet.client.publish(command, b'{"op": "reload"}', qos=1).wait_for_publish(5)
    with pytest.raises(queue.Empty):
        thief.messages.get(timeout=1)
    # nor can anyone log in as dev-a without its password
    impostor = Client(mosquitto.port, "dev-a", username="dev-a", password="guess")
    impostor.connect()
    assert impostor.connect_reason.is_failure

    # the victim comes back to its session and gets the command queued for it
    back = connected(
        Client(mosquitto.port, "dev-a", username="dev-a", password="pw-a", session_expiry_s=600)
    )
    got = back.messages.get(timeout=5)
    assert (got.topic, got.payload, got.qos) == (command, b'{"op": "reload"}', 1)
    for c in (thief, fleet, back, impostor):
        c.client.disconnect()
        c.client.loop_stop()


def test_the_acl_of_every_channel_for_devices_and_the_fleet(mosquitto: Mosquitto) -> None:
    fleet = connected(
        Client(fleet_port(mosquitto), "fleet-1", username="fleet", password="pw-fleet")
    )
    fleet.client.subscribe(f"{topics.PREFIX}/#", qos=1)
    fleet.subscribe_granted.get(timeout=5)
    a = connected(Client(mosquitto.port, "dev-a", username="dev-a", password="pw-a"))
    b = connected(Client(mosquitto.port, "dev-b", username="dev-b", password="pw-b"))
    for channel in topics.Channel:
        own, other = topics.topic("dev-a", channel), topics.topic("dev-b", channel)
        # Mosquitto 2.0 grants the subscription and checks each message's delivery
        for where in (own, other):
            a.client.subscribe(where, qos=1)
            a.subscribe_granted.get(timeout=5)
    for channel in topics.Channel:
        own, other = topics.topic("dev-a", channel), topics.topic("dev-b", channel)
        for where in (own, other):
            a.client.publish(where, b"from a", qos=1).wait_for_publish(5)
            fleet.client.publish(where, b"from the fleet", qos=1).wait_for_publish(5)
    time.sleep(0.5)  # let the last messages arrive before counting what did

    def drain(client: Client) -> set[tuple[str, str]]:
        seen = set()
        while not client.messages.empty():
            m = client.messages.get()
            seen.add((m.topic, m.payload.decode()))
        return seen

    # a device writes only its own channels from devices; the fleet hears them
    to_fleet = {t for t, p in drain(fleet) if p == "from a"}
    assert to_fleet == {topics.topic("dev-a", c) for c in topics.Channel if c.from_device}
    # a device reads only its own channels to devices, written by the fleet
    to_a = drain(a)
    assert to_a == {
        (topics.topic("dev-a", c), "from the fleet") for c in topics.Channel if not c.from_device
    }
    for c in (fleet, a, b):
        c.client.disconnect()
        c.client.loop_stop()


def _certificates(root: Path) -> tuple[TlsFiles, Path]:
    """A CA, a server certificate it signed for 127.0.0.1, and another CA."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    now = datetime.now(UTC)
    paths = []
    cas = []
    for cn in ("edgefleet test CA", "another CA"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        path = root / f"{cn.replace(' ', '-')}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths.append(path)
        cas.append((key, cert))
    ca_key, ca_cert = cas[0]
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (root / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, root / "server.key")
    (root / "server.key").chmod(0o600)
    return TlsFiles(root / "server.pem", root / "server.key", paths[0]), paths[1]


def _handshake(port: int, cafile: Path) -> None:
    """A TLS handshake with the broker, trusting `cafile` (raises if it fails)."""
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


def _tls_connect(port: int, cafile: Path) -> mqtt.ReasonCode:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-a")
    client.username_pw_set("dev-a", "pw-a")
    client.tls_set(ca_certs=str(cafile), cert_reqs=ssl.CERT_REQUIRED)
    result: queue.Queue[mqtt.ReasonCode] = queue.Queue()
    client.on_connect = lambda c, u, f, reason, p: result.put(reason)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        return result.get(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_tls_with_the_wrong_ca_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "broker"
    root.mkdir()
    tls, wrong_ca = _certificates(root)
    server = broker(root, tls=tls)
    server.start()
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
            _handshake(server.port, wrong_ca)
        _handshake(server.port, tls.cafile)
        # and over it, a device logs in with its own credentials (mqtts://)
        assert not _tls_connect(server.port, tls.cafile).is_failure
    finally:
        server.stop()

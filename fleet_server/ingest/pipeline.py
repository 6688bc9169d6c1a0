"""Ingestion: messages off the bridge, decoded, batched, written by one thread.

`start_ingest(fleet)` is what the app's lifespan calls: it starts the embedded
broker when no broker URL is configured, connects the bridge, starts the writer
thread, makes the bridge the fleet's publisher and registers itself to be stopped.

The writer acknowledges each QoS 1 message to the broker only after the batch
holding it is committed (or refused for good: malformed, unknown device), so a
server killed mid-batch loses nothing: the broker keeps the session and delivers
what was never acknowledged again when the server reconnects under the same
client id (from ``--replica-id``, or the host name and the data directory). The
price: a replica killed for good keeps its share of the shared subscription
queued in its session until the session expires (an hour) or it comes back.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy.exc import OperationalError

from edge_agent.errors import MessageError, SpoofedMessageError, TopicError
from edge_agent.protocol import Ack, DeviceState, Event, Telemetry, decode, topics
from fleet_server.broker.embedded import EmbeddedBroker
from fleet_server.cluster.wake import announce_report
from fleet_server.context import Fleet
from fleet_server.ingest.bridge import BrokerKind, Delivery, MqttBridge, without_credentials
from fleet_server.ingest.stats import IngestStats, Rejection
from fleet_server.ingest.store import Incoming, store_batch

__all__ = ["Ingest", "find_ingest", "start_ingest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Raw:
    delivery: Delivery
    received_at: datetime

    @property
    def topic(self) -> str:
        return self.delivery.topic


def _client_id(fleet: Fleet) -> str:
    """The same on every start of one server (so it resumes its broker session): from its
    ``--replica-id`` when given, else from the host name and the data directory."""
    settings = fleet.settings
    who = settings.replica_id or f"{socket.gethostname()}:{settings.data_dir.resolve()}"
    return f"edgefleet-fleet-{hashlib.sha256(who.encode()).hexdigest()[:12]}"


_STOP = object()


def _wants_fresh_link(message: object) -> bool:
    """A device back online, or told 403 by a download link: its pending link may be old."""
    if isinstance(message, Event):
        return message.type == "update.link_expired"
    return isinstance(message, DeviceState) and message.online


class Ingest:
    """The bridge, the writer thread and their counters. Also the fleet's `Publisher`."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        url: str,
        kind: BrokerKind,
        device_url: str,
        broker: EmbeddedBroker | None = None,
    ) -> None:
        self.fleet = fleet
        self.device_url = device_url
        self.broker = broker
        self.stats = IngestStats()
        self._queue: queue.Queue[_Raw | object] = queue.Queue()
        self.bridge = MqttBridge(
            url,
            on_message=self._received,
            kind=kind,
            username=fleet.settings.mqtt_username,
            password=fleet.settings.mqtt_password,
            group=fleet.settings.subscription_group,
            client_id=_client_id(fleet),
            receive_maximum=min(65535, 10 * fleet.settings.ingest_batch),
        )
        self._writer = threading.Thread(target=self._write_loop, name="edgefleet-ingest")
        self._idle = threading.Event()
        self._stop = threading.Event()

    def start(self) -> None:
        self._writer.start()
        self.bridge.start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.bridge.publish(topic, payload, retain=retain)

    def publish_many(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        self.bridge.publish_many(messages)

    def wait_subscribed(self, timeout: float) -> bool:
        return self.bridge.wait_subscribed(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """True once everything received so far is written (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._idle.clear()
            if self._queue.unfinished_tasks == 0:
                return True
            self._idle.wait(0.05)
        return False

    def _quiet(self, quiet_s: float, *, timeout: float) -> None:
        """Wait until all received is written and nothing more arrived for `quiet_s`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.stats.received
            if not self.wait_idle(max(0.0, deadline - time.monotonic())):
                return
            time.sleep(quiet_s)
            if self.stats.received == seen:
                return

    def snapshot(self) -> dict[str, object]:
        out = self.stats.snapshot()
        out.update(
            connected=self.bridge.connected,
            subscribed=self.bridge.subscribed,
            connects=self.bridge.connects,
            queued=self._queue.qsize(),
            stale_acks=self.bridge.stale_acks,
            subscriptions=list(self.bridge.filters),
        )
        return out

    def stop(self) -> None:
        # a clean stop: the broker sends no more, the writer stores and acknowledges what came
        # (until nothing has for a moment), then the session ends; a crash skips all of this
        # and the broker keeps the session, with what was never acknowledged, for the restart
        if self.bridge.leave(timeout=5.0):
            self._quiet(0.2, timeout=10.0)
        self._stop.set()
        self._queue.put(_STOP)
        self._writer.join(30)
        self.bridge.stop()
        if self.broker is not None:
            self.broker.stop()

    # -- the paho thread --------------------------------------------------------------------

    def _received(self, delivery: Delivery) -> None:
        self.stats.count("received")
        self._queue.put(_Raw(delivery, self.fleet.clock()))

    # -- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        # no waiting for a batch to fill: a batch is what arrived while the last one was being
        # written (up to ingest_batch), so one message alone is stored at once and a stream
        # gets batches as large as the database's pace makes them (a group commit)
        limit = self.fleet.settings.ingest_batch
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                self._queue.task_done()
                break
            assert isinstance(first, _Raw)
            batch = [first]
            while len(batch) < limit:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._queue.task_done()
                    stopping = True
                    break
                assert isinstance(item, _Raw)
                batch.append(item)
            settled = True
            try:
                settled = self._write(batch)
            except Exception:  # the writer must outlive any one batch
                log.exception("ingesting a batch of %d messages failed", len(batch))
                for _ in batch:
                    self.stats.reject(Rejection.STORE_FAILED)
            finally:
                if settled:
                    # only now: a crash before this line leaves them to be delivered again
                    self.bridge.ack([r.delivery for r in batch])
                for _ in batch:
                    self._queue.task_done()
                self._idle.set()

    def _write(self, raw: list[_Raw]) -> bool:
        """Store `raw`; False if it could not be and must stay unacknowledged."""
        decoded = [m for m in (self._decode(r) for r in raw) if m is not None]
        delay = 0.5
        while decoded:
            try:
                self._store(decoded)
                return True
            except OperationalError:
                # the database is away (restart, failover): keep the batch and wait for it
                if self._stop.is_set():
                    log.exception(
                        "database unavailable at shutdown: %d messages left unacknowledged "
                        "for the broker to deliver again",
                        len(decoded),
                    )
                    return False
                log.warning("database unavailable; retrying in %.1f s", delay, exc_info=True)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        return True

    def _store(self, decoded: list[Incoming]) -> None:
        reports = any(not isinstance(m.message, Telemetry) for m in decoded)
        try:
            with self.fleet.db.session() as session:
                unknown = store_batch(session, decoded, self.stats)
                if reports:  # the leader's engine may be another replica's
                    announce_report(session, replica=self.fleet.leader.replica)
        except OperationalError:
            raise
        except Exception:
            # one bad row (or a replica that stored the same window first) must not cost
            # the batch its other messages: store them one by one
            log.warning("a batch of %d failed; storing one by one", len(decoded), exc_info=True)
            done = 0
            try:
                for item in decoded:
                    self._write_one(item)  # committed (or refused) on its own
                    done += 1
            finally:
                # the database going away midway (OperationalError) sends the batch back to
                # `_write` to wait and retry: only with what was not stored yet, so nothing
                # is applied twice (a duplicate counted, an ack put on the timeline again)
                del decoded[:done]
            return
        self.stats.count("batches")
        if reports:
            self.fleet.device_reported.set()  # the rollout engine acts on it now
            if due := {m.message.device_id for m in decoded if _wants_fresh_link(m.message)}:
                self.fleet.links_due.add(due)  # their pending download links, renewed now
        for _ in unknown:
            self.stats.reject(Rejection.UNKNOWN_DEVICE)
        if unknown:
            refused = set(map(id, unknown))
            decoded = [m for m in decoded if id(m) not in refused]
        for m in decoded:
            self.stats.accept(_channel(m))

    def _write_one(self, item: Incoming) -> None:
        try:
            with self.fleet.db.session() as session:
                unknown = store_batch(session, [item], self.stats)
                if not isinstance(item.message, Telemetry):
                    announce_report(session, replica=self.fleet.leader.replica)
        except OperationalError:
            raise
        except Exception:
            log.exception("storing a message of %s failed", item.message.device_id)
            self.stats.reject(Rejection.STORE_FAILED)
        else:
            if unknown:
                self.stats.reject(Rejection.UNKNOWN_DEVICE)
                return
            self.stats.accept(_channel(item))
            if not isinstance(item.message, Telemetry):
                self.fleet.device_reported.set()

    def _decode(self, raw: _Raw) -> Incoming | None:
        try:
            if not topics.parse(raw.topic).channel.from_device:
                raise TopicError(f"devices do not publish on {raw.topic!r}", topic=raw.topic)
            message = decode(raw.topic, raw.delivery.payload)
        except TopicError:
            self.stats.reject(Rejection.BAD_TOPIC)
        except SpoofedMessageError:
            self.stats.reject(Rejection.SPOOFED)
        except MessageError as exc:
            log.info("rejected a malformed message on %s: %s", raw.topic, exc)
            self.stats.reject(Rejection.MALFORMED)
        else:
            assert isinstance(message, Telemetry | DeviceState | Event | Ack)
            return Incoming(message, raw.received_at)
        return None


def _channel(item: Incoming) -> str:
    return item.message.kind


def find_ingest(fleet: Fleet) -> Ingest | None:
    """The fleet's running ingestion, if any."""
    for component in fleet.background:
        if isinstance(component, Ingest):
            return component
    return None


def start_ingest(fleet: Fleet, *, subscribe_timeout: float = 10.0) -> Ingest:
    """Start the broker link for `fleet`: the embedded broker if `settings.mqtt_url` is empty.

    The returned `Ingest` is in `fleet.background` (stopped with the app); it is also a
    `Publisher`, which the caller makes `fleet.publisher`.
    """
    settings = fleet.settings
    broker = None
    if settings.mqtt_url:
        url, kind = settings.mqtt_url, BrokerKind.MQTT5
        device_url = without_credentials(url)  # a device gets its own credentials
    else:
        broker = EmbeddedBroker(port=settings.embedded_mqtt_port)
        broker.start()
        host = urlsplit(settings.public_url).hostname or broker.host
        url, kind, device_url = broker.url, BrokerKind.MQTT311, f"mqtt://{host}:{broker.port}"
    try:
        ingest = Ingest(fleet, url=url, kind=kind, device_url=device_url, broker=broker)
    except Exception:
        if broker is not None:
            broker.stop()
        raise
    fleet.background.append(ingest)
    ingest.start()
    if not ingest.wait_subscribed(subscribe_timeout):
        log.warning(
            "MQTT broker %s not reachable yet; ingestion retries in the background", device_url
        )
    return ingest

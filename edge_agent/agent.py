"""The edge agent: serves the active bundle, spools telemetry, follows the fleet's desired state.

Threads, and what each may wait on::

    request threads     (local server, in-process callers)   nothing but the model
    edgefleet-control   desired states, commands, probation   downloads, disk
    edgefleet-window    closes a telemetry window every N s   the outbox (SQLite)
    edgefleet-publisher outbox -> broker                      the network
    paho network        incoming messages                     the network

>>> agent = Agent(load_config(Path("/etc/edgefleet/agent.toml")))
>>> agent.start()              # serving as soon as this returns, broker or not
>>> agent.serving.predict({"pixels": x})
>>> agent.stop()
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import FrameType

from edge_agent.config import AgentConfig
from edge_agent.errors import EdgeAgentError, ProfileError
from edge_agent.keys import load_trusted_keys
from edge_agent.link import FleetLink
from edge_agent.profiles import load_profile
from edge_agent.protocol import topics
from edge_agent.protocol.codec import encode
from edge_agent.protocol.messages import (
    Ack,
    AckStatus,
    BundleRef,
    Command,
    CommandName,
    DesiredState,
    DeviceState,
    Event,
    Health,
    Message,
    Severity,
)
from edge_agent.server import LocalServer
from edge_agent.serving import Serving
from edge_agent.swap.store import BundleStore
from edge_agent.swap.updater import Updater, report_damage
from edge_agent.telemetry.outbox import Outbox
from edge_agent.telemetry.window import WindowAggregator
from edge_agent.version import agent_version

__all__ = ["Agent"]

log = logging.getLogger(__name__)

EVENTS_MAX_BYTES = 8 * 1024 * 1024
Details = Mapping[str, str | int | float | bool | None]


class Agent:
    """Everything that runs on one device, wired from one `AgentConfig`."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.device_id = config.device.id
        self.started_at = time.monotonic()
        try:
            profile = load_profile(config.device.profile)
        except ProfileError as exc:
            raise ProfileError(f"device.profile in {config.source or 'the config'}: {exc}") from exc
        self.profile = profile
        budget = config.update.latency_budget_ms or profile.budgets.max_latency_ms
        trust = load_trusted_keys(list(config.paths.trusted_keys))
        t = config.telemetry
        self.outbox = Outbox(
            config.outbox_path,
            max_bytes=int(t.outbox_max_mb * 1024 * 1024),
            sync=t.sync,
            boot_id_file=t.boot_id_file,
        )
        self.events = Outbox(
            config.events_path, max_bytes=EVENTS_MAX_BYTES, sync=t.sync, boot_id_file=t.boot_id_file
        )
        self.aggregator = WindowAggregator(max_binned_per_s=t.drift_max_per_s or None)
        self._window_lock = threading.Lock()
        self.serving = Serving(
            self.aggregator,
            close_window=self.close_window,
            shadow_queue=config.inference.shadow_queue,
        )
        self.store = BundleStore(config.paths.state_dir)
        self.updater = Updater(
            store=self.store,
            serving=self.serving,
            trust=trust,
            profile=profile.name,
            rules=config.update,
            latency_budget_ms=budget,
            events=self.emit,
            threads=config.inference.threads,
            preempted=self._orders_waiting,
        )
        self.link: FleetLink | None = None
        if config.mqtt.url:
            self.link = FleetLink(
                config.mqtt,
                device_id=self.device_id,
                outboxes=[self.outbox, self.events],
                state=self.device_state,
                on_message=self._received,
                on_rejected=self._rejected,
            )
        s = config.server
        self.server: LocalServer | None = None
        if s.tcp or s.unix_socket is not None:  # neither: only in-process callers (and tests)
            self.server = LocalServer(
                self.serving,
                host=s.host,
                port=s.port if s.tcp else None,
                unix_socket=s.unix_socket,
                max_body_bytes=int(s.max_body_mb * 1024 * 1024),
                max_connections=s.max_connections,
                request_timeout_s=s.request_timeout_s,
            )
        # each message with whether it ends a download in progress (see _preempts)
        self._inbox: queue.Queue[tuple[Message, bool] | None] = queue.Queue(maxsize=256)
        # orders queued that end a download in progress: a newer desired state, a rollback
        self._orders = 0
        self._orders_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Serve the best verified bundle on disk, then connect to the fleet in the background."""
        self.emit("agent.started", f"edgefleet agent {agent_version()} starting")
        self._report_damaged_spools()
        self.updater.boot(self.config.paths.initial_bundle)
        if self.server is not None:
            self.server.start()
        for target, name in ((self._control_loop, "control"), (self._window_loop, "window")):
            thread = threading.Thread(target=target, name=f"edgefleet-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.link is not None:
            self.link.start()
        from edge_agent.firstboot import start_first_boot  # once, on a provisioned device

        start_first_boot(self)

    def stop(self) -> None:
        """Close the current window into the outbox, say offline, and stop every thread."""
        self._stop.set()
        self.updater.cancelled.set()
        self._inbox.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        if not any(thread.is_alive() for thread in self._threads):
            self.updater.stopped()  # a clean stop does not count against a probation
        if self.server is not None:
            self.server.stop()
        self.close_window()
        if self.link is not None:
            self.link.stop()
        self.serving.close()
        self.aggregator.close()
        self.outbox.close()
        self.events.close()

    def run(self) -> None:
        """Start, then block until SIGTERM or SIGINT; stop cleanly."""
        stop = threading.Event()

        def handle(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        self.start()
        while not stop.wait(1.0):
            pass
        self.stop()

    # --- telemetry ----------------------------------------------------------------------

    def close_window(self) -> None:
        """Close the current telemetry window and spool it (a sequence number per window)."""
        with self._window_lock:
            snapshot = self.aggregator.rotate()
            dropped = self.outbox.take_dropped()
            seq = self.outbox.append(
                lambda seq: (
                    topics.telemetry(self.device_id),
                    # the epoch read under the outbox's lock: the spool that numbers `seq`
                    encode(
                        snapshot.message(
                            device_id=self.device_id,
                            seq=seq,
                            dropped=dropped,
                            epoch=self.outbox.epoch,
                        )
                    ),
                )
            )
            if seq is None:  # disk full: this window is lost too; report both later
                self.outbox.count_lost(dropped)
        self._report_damaged_spools()
        if self.link is not None:
            self.link.wake()

    def _report_damaged_spools(self) -> None:
        """An ``agent.file_damaged`` event for each spool set aside (at start or since)."""
        for outbox in (self.outbox, self.events):
            for damage in outbox.take_damaged():
                report_damage(self.emit, damage, root=self.config.paths.state_dir)

    def _window_loop(self) -> None:
        for outbox in (self.events, self.outbox):  # every page read: off the serving path
            outbox.verify()
        window = self.config.telemetry.window_s
        deadline = time.monotonic() + window
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            try:
                self.close_window()
            except Exception:  # keep windows coming whatever one failure was
                log.exception("closing a telemetry window failed")
            deadline += window
            if deadline < time.monotonic():  # suspended or overloaded: do not catch up in a burst
                deadline = time.monotonic() + window

    def emit(
        self,
        type: str,
        message: str,
        *,
        severity: Severity = Severity.INFO,
        bundle: BundleRef | None = None,
        details: Details | None = None,
    ) -> None:
        """Report an event: logged, spooled, and published when the broker is reachable."""
        level = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING}.get(
            severity, logging.ERROR
        )
        log.log(level, "%s: %s", type, message, extra={"event": type, **(details or {})})
        ts = datetime.now(UTC)
        self.events.append(
            lambda seq: (
                topics.events(self.device_id),
                encode(
                    Event(
                        device_id=self.device_id,
                        seq=seq,
                        epoch=self.events.epoch,
                        ts=ts,
                        type=type,
                        severity=severity,
                        message=message[:4000],
                        bundle=bundle,
                        details=dict(details or {}),
                    )
                ),
            )
        )
        if type.startswith(("update.", "agent.serving", "bundle.")) and self.link is not None:
            self.link.publish_state()
        if self.link is not None:
            self.link.wake()

    def device_state(self, online: bool) -> DeviceState:
        state = self.store.read_state()
        active = self.serving.active
        return DeviceState(
            device_id=self.device_id,
            online=online,
            ts=datetime.now(UTC),
            agent_version=agent_version(),
            profile=self.profile.name,
            active_bundle=active.ref if active else None,
            previous_bundle=state.previous.ref if state.previous else None,
            health=(
                Health.UNKNOWN
                if not online
                else Health.DEGRADED
                if self.serving.probation is not None
                else Health.OK
                if active
                else Health.FAILED
            ),
            uptime_s=round(time.monotonic() - self.started_at, 3),
            desired_revision=state.desired_revision,
        )

    # --- incoming -----------------------------------------------------------------------

    def _preempts(self, message: Message | None) -> bool:
        if isinstance(message, Command):
            return message.name is CommandName.ROLLBACK
        if isinstance(message, DesiredState):
            pending = self.updater.pending
            return pending is None or message.revision > pending.revision
        return False

    def _orders_waiting(self) -> bool:
        return self._orders > 0

    def _received(self, message: Message) -> None:
        preempts = self._preempts(message)
        if preempts:
            with self._orders_lock:
                self._orders += 1
        try:
            self._inbox.put_nowait((message, preempts))
        except queue.Full:
            if preempts:
                with self._orders_lock:
                    self._orders -= 1
            self.emit(
                "protocol.overloaded",
                f"dropped a {message.kind} message: the control queue is full",
                severity=Severity.WARNING,
            )

    def _rejected(self, topic: str, detail: str) -> None:
        self.emit(
            "protocol.rejected",
            f"rejected a message on {topic}: {detail}",
            severity=Severity.WARNING,
            details={"topic": topic},
        )

    def submit(self, message: Message) -> None:
        """Hand a desired state or command to the control thread (tests, local tools)."""
        self._received(message)

    def _control_loop(self) -> None:
        try:
            self.updater.verify_previous()  # what a rollback needs, checked once serving
        except Exception as exc:
            log.exception("verifying the previous bundle")
            self.emit("agent.error", f"internal error: {exc}", severity=Severity.ERROR)
        while not self._stop.is_set():
            # judge a probation promptly; otherwise wake twice a second
            wait = 0.05 if self.serving.probation is not None else 0.5
            try:
                item = self._inbox.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is not None and item[1]:
                with self._orders_lock:
                    self._orders -= 1
            message = item[0] if item is not None else None
            try:
                if isinstance(message, DesiredState):
                    self.updater.apply(message)
                elif isinstance(message, Command):
                    self._command(message)
                elif message is not None:
                    self._rejected(f"{message.kind}", "not a message the device acts on")
                self.updater.tick()
                self._report_damaged_spools()  # a spool found damaged while running
            except Exception as exc:  # the control loop must outlive any single failure
                log.exception("control loop")
                self.emit("agent.error", f"internal error: {exc}", severity=Severity.ERROR)

    def _command(self, command: Command) -> None:
        def ack(status: AckStatus, detail: str = "") -> None:
            reply = Ack(
                device_id=self.device_id,
                command_id=command.id,
                status=status,
                ts=datetime.now(UTC),
                detail=detail[:4000],
            )
            if self.link is not None:
                self.link.publish_ack(reply)

        if command.expires_at is not None and command.expires_at < datetime.now(UTC):
            ack(AckStatus.EXPIRED, f"expired at {command.expires_at.isoformat()}")
            return
        ack(AckStatus.ACCEPTED)
        try:
            if command.name is CommandName.ROLLBACK:
                detail = self.updater.rollback("ordered")
            elif command.name is CommandName.SELFTEST:
                active = self.serving.active
                if active is None:
                    raise EdgeAgentError("no model is active")
                result = active.model.selftest()
                detail = f"passed; max abs error {result.max_abs_error:.3g}"
            elif command.name is CommandName.FLUSH_TELEMETRY:
                self.close_window()
                detail = f"{len(self.outbox)} telemetry windows spooled"
            else:
                detail = "pong"
        except EdgeAgentError as exc:
            ack(AckStatus.FAILED, str(exc))
            return
        ack(AckStatus.SUCCEEDED, detail)

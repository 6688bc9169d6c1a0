"""An in-process MQTT broker (amqtt), so one command serves a small fleet.

amqtt speaks MQTT 3.1.1 only: no shared subscriptions, so a fleet with several
server replicas uses a real broker (Mosquitto, EMQX). The edgefleet contract
needs nothing from MQTT 5 beyond shared subscriptions, so agents work with both.

It has no passwords and no ACL: any client could publish any device's orders. So it
listens on loopback only, and refuses any other address with `EmbeddedBrokerError`;
devices elsewhere connect to a Mosquitto written by ``edgefleet fleet broker-config``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError"]


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not start (port taken, amqtt missing, not loopback)."""


class EmbeddedBroker:
    """amqtt running on its own event loop in a daemon thread.

    >>> with EmbeddedBroker(port=0) as broker:
    ...     print(broker.port)  # a free port was chosen
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 1883) -> None:
        if not _loopback(host):
            raise EmbeddedBrokerError(
                f"the embedded broker has no passwords or ACL, so it listens on loopback only, "
                f"not {host!r}: for devices on the network, run Mosquitto (`edgefleet fleet "
                "broker-config`) and start the server with --mqtt-url"
            )
        self.host = host
        self.port = port or _free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise EmbeddedBrokerError(
                "the embedded broker needs the 'fleet' extra: pip install 'edgefleet[fleet]'"
            ) from exc
        # amqtt logs every packet at INFO; keep the server's log readable
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        started: Future[None] = Future()
        loop = asyncio.new_event_loop()

        async def boot() -> None:
            self._broker = Broker(config, loop=loop)
            self._broker._subscriptions = _Snapshots()  # see _Snapshots
            await self._broker.start()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(boot())
            except BaseException as exc:  # reported to the caller of start()
                started.set_exception(exc)
                return
            started.set_result(None)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="edgefleet-broker", daemon=True)
        self._thread.start()
        try:
            started.result(timeout)
        except Exception as exc:
            raise EmbeddedBrokerError(
                f"embedded MQTT broker could not listen on {self.host}:{self.port}: {exc}"
            ) from exc

    def stop(self, timeout: float = 10.0) -> None:
        loop, broker = self._loop, self._broker
        if loop is None or broker is None:
            return
        asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(timeout)
        asyncio.run_coroutine_threadsafe(_close_leftovers(loop), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        loop.close()
        self._loop = self._broker = self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Snapshots(dict[str, Any]):
    """amqtt's subscription table, iterated over snapshots.

    amqtt 0.12 loops over its live table across awaits (the retained messages sent
    to a connecting client, each broadcast): a client subscribing meanwhile makes
    the loop raise "dictionary changed size during iteration", which drops the
    connecting client. With 20 agents connecting at once that happened to a dozen
    of them in a measurement here. A snapshot is what those loops mean.
    """

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def keys(self) -> list[str]:  # type: ignore[override]
        return list(super().keys())

    def values(self) -> list[Any]:  # type: ignore[override]
        return list(super().values())

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return list(super().items())


async def _close_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Close what amqtt's shutdown leaves open (connections of clients that vanished
    without DISCONNECT), so stopping the broker leaks no sockets or tasks."""
    transports = getattr(loop, "_transports", {})  # selector loops keep fd -> transport
    for transport in list(transports.values()):
        if transport is not None:
            transport.abort()  # not close(): a dead peer would keep a write buffer pending
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks(loop) if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _ in range(3):
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

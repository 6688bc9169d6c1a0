"""`edgefleet agent doctor`: is this device fit to run its agent? One finding per check.

Each check looks at the real thing — ``/proc/cpuinfo``, the installed runtime,
the trusted keys and bundles on disk, a fleet server's clock, the broker with
the device's own credentials, the state directory's file system — and returns
a `Finding`: ``ok``, ``warn`` (runs, but not as the profile intends), ``fail``
(will not run as configured; the finding says what to fix) or ``skip`` (not
checkable with what the config knows). Nothing here patches or starts the
agent; the bundle verification is the one `agent check` prints.

>>> findings = diagnose(load_config(Path("agent.toml")))
>>> [f.status for f in findings]
['ok', 'ok', 'ok', 'ok', 'ok', 'skip', 'ok', 'ok']
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edge_agent.errors import EdgeAgentError

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig, MqttConfig
    from edge_agent.keys import TrustedKey
    from edge_agent.profiles import HardwareProfile

__all__ = [
    "CLOCK_FAIL_S",
    "CLOCK_WARN_S",
    "Finding",
    "check_broker",
    "check_clock",
    "check_cpu",
    "check_disk",
    "check_runtime",
    "cpu_features",
    "diagnose",
    "verify_bundles",
]

Status = Literal["ok", "warn", "fail", "skip"]

# a skew past a minute expires the fleet's download links early or late and misdates
# telemetry; TLS breaks at hours, but by then nothing else is right either
CLOCK_WARN_S = 5.0
CLOCK_FAIL_S = 60.0

# how profiles spell an ISA feature -> the names /proc/cpuinfo may give it (Linux's)
_CPUINFO_NAMES = {
    "neon": ("asimd", "neon"),
    "fp16": ("fphp", "asimdhp"),
    "dotprod": ("asimddp",),
    "avx512vnni": ("avx512_vnni",),
    "avxvnni": ("avx_vnni",),
}


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One check's outcome: `detail` says what was found, and on warn/fail what to do."""

    check: str
    status: Status
    detail: str

    def line(self) -> str:
        word = {"ok": "ok", "warn": "warn", "fail": "FAIL", "skip": "skip"}[self.status]
        return f"{word:<4}  {self.check}: {self.detail}"


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); None when unreadable."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            found.update(value.split())
    return found


def check_cpu(
    profile: HardwareProfile,
    *,
    machine: str | None = None,
    cpuinfo: Path = Path("/proc/cpuinfo"),
) -> Finding:
    """The CPU architecture and the ISA features the profile states, against this CPU."""
    arch = machine or platform.machine()
    want = profile.hardware.arch
    if arch != want:
        return Finding(
            check="cpu",
            status="fail",
            detail=f"this CPU is {arch}, profile {profile.name!r} is for {want}: "
            "set device.profile to this device's profile, or install the image built for it",
        )
    flags = cpu_features(cpuinfo)
    if flags is None:
        return Finding(
            check="cpu", status="warn", detail=f"{arch}; cannot read {cpuinfo} to check features"
        )
    missing = [
        f
        for f in profile.hardware.isa_features
        if not any(name in flags for name in (f, *_CPUINFO_NAMES.get(f, ())))
    ]
    if missing:
        return Finding(
            check="cpu",
            status="fail",
            detail=f"profile {profile.name!r} needs CPU features {', '.join(missing)}, which "
            f"{cpuinfo} does not list: use a profile for this CPU (edgefleet profiles list)",
        )
    have = ", ".join(profile.hardware.isa_features) or "no extra features"
    return Finding(check="cpu", status="ok", detail=f"{arch} with {have}")


def check_runtime(profile: HardwareProfile) -> Finding:
    """The profile's runtime is installed, with its execution providers or delegates."""
    spec = profile.runtime
    try:
        if spec.name == "onnxruntime":
            from edge_agent.runtime.onnx import available_providers

            available = available_providers()
            missing = [p for p in spec.execution_providers if p not in available]
            usable = [p for p in spec.execution_providers if p in available]
            if not usable:
                return Finding(
                    check="runtime",
                    status="fail",
                    detail=f"onnxruntime offers {', '.join(available)}, none of the profile's "
                    f"{', '.join(spec.execution_providers)}: install the onnxruntime build "
                    "for this device",
                )
            if missing:
                return Finding(
                    check="runtime",
                    status="warn",
                    detail=f"onnxruntime lacks {', '.join(missing)}; models run on "
                    f"{', '.join(usable)}: install the onnxruntime build with them",
                )
            return Finding(
                check="runtime", status="ok", detail=f"onnxruntime with {', '.join(usable)}"
            )
        if spec.name == "tflite":
            from edge_agent.runtime.tflite import interpreter_module, probe_delegate

            module = interpreter_module()
            for name in spec.delegates:
                probe_delegate(name)
            have = ", ".join(spec.delegates) or "the CPU"
            return Finding(check="runtime", status="ok", detail=f"{module.__name__} with {have}")
    except EdgeAgentError as exc:
        return Finding(check="runtime", status="fail", detail=str(exc))
    return Finding(
        check="runtime",
        status="skip",
        detail=f"runtime {spec.name!r} runs in firmware, not under the agent",
    )


def verify_bundles(
    config: AgentConfig, *, profile: HardwareProfile, trust: list[TrustedKey]
) -> dict[str, str]:
    """Verify every bundle the agent would load (active, previous, initial); raise on one bad.

    Returns each found bundle by role (``active``: ``"tiny 1.0.0"``). The one
    place `agent check` and `agent doctor` verify what is on disk.
    """
    from edge_agent.bundle import read_bundle
    from edge_agent.errors import ConfigError
    from edge_agent.swap.store import BundleStore

    found: dict[str, str] = {}
    if config.paths.state_dir.is_dir():
        store = BundleStore(config.paths.state_dir)
        state = store.read_state()
        for role, slot in (("active", state.active), ("previous", state.previous)):
            if slot is not None:
                read_bundle(store.path_of(slot), trust=trust)
                found[role] = f"{slot.model} {slot.version}"
    initial = config.paths.initial_bundle
    if initial is not None and initial.exists():
        bundle = read_bundle(initial, trust=trust)
        if bundle.manifest.profile != profile.name:
            raise ConfigError(
                f"initial bundle {initial} is for profile {bundle.manifest.profile!r}, "
                f"but device.profile is {profile.name!r}"
            )
        found["initial_bundle"] = f"{bundle.manifest.model.name} {bundle.manifest.model.version}"
    return found


def check_clock(
    fleet_url: str | None, *, now: Callable[[], float] = time.time, timeout_s: float = 5.0
) -> Finding:
    """This clock against the ``Date`` header of a request to the fleet's HTTP(S) server."""
    if not fleet_url:
        return Finding(
            check="clock",
            status="skip",
            detail="the config names no fleet HTTP server: pass --fleet-url to compare clocks",
        )
    import urllib.error
    import urllib.request

    if not fleet_url.startswith(("http://", "https://")):
        return Finding(
            check="clock",
            status="fail",
            detail=f"--fleet-url {fleet_url!r} must start with http:// or https://",
        )
    sent = now()
    try:
        request = urllib.request.Request(fleet_url, method="HEAD")  # noqa: S310 (scheme checked)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            date = response.headers.get("Date")
    except urllib.error.HTTPError as exc:  # any answer carries the server's clock
        date = exc.headers.get("Date")
    except (OSError, ValueError) as exc:
        return Finding(
            check="clock",
            status="fail",
            detail=f"cannot reach {fleet_url} ({exc}): check the URL and the network",
        )
    received = now()
    if not date:
        return Finding(
            check="clock", status="warn", detail=f"{fleet_url} sent no Date header to compare"
        )
    # the header is whole seconds (truncated), stamped between sending and receiving
    theirs = parsedate_to_datetime(date).timestamp() + 0.5
    skew = (sent + received) / 2 - theirs
    if abs(skew) <= 0.5 + (received - sent) / 2:
        skew = 0.0
    status: Status = (
        "fail" if abs(skew) >= CLOCK_FAIL_S else "warn" if abs(skew) >= CLOCK_WARN_S else "ok"
    )
    detail = f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} {fleet_url}"
    if status != "ok":
        detail += ": sync this clock (NTP: systemd-timesyncd or chrony)"
    elif skew == 0.0:
        detail = f"within a second of {fleet_url}"
    return Finding(check="clock", status=status, detail=detail)


def check_broker(config: MqttConfig, *, device_id: str, timeout_s: float = 5.0) -> Finding:
    """A real MQTT CONNECT with the device's own credentials (and TLS settings)."""
    if not config.url:
        return Finding(check="broker", status="skip", detail="mqtt.url is empty: offline device")
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    from edge_agent.link import broker_address, tls_context

    try:
        host, port = broker_address(config)
        username = config.username or device_id
        password = config.read_password()
        context = tls_context(config)
    except (EdgeAgentError, OSError) as exc:
        return Finding(check="broker", status="fail", detail=f"{config.url}: {exc}")
    # its own client id and a clean session: the agent's session on the broker stays as it is
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{device_id}-doctor",
        clean_session=True,
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.username_pw_set(username, password)
    if context is not None:
        client.tls_set_context(context)
    answered = threading.Event()
    reason: list[str] = []

    def connected(client: object, userdata: object, flags: object, code: object, _: object) -> None:
        reason.append("" if not getattr(code, "is_failure", False) else str(code))
        answered.set()

    client.on_connect = connected
    where = f"broker {host}:{port} as {username!r}"
    try:
        client.connect(host, port, keepalive=10)
        client.loop_start()
        answered.wait(timeout_s)
    except (OSError, ValueError) as exc:
        return Finding(
            check="broker", status="fail", detail=f"cannot reach {where} ({exc}): check mqtt.url"
        )
    finally:
        client.loop_stop()
        client.disconnect()
    if not reason:
        return Finding(
            check="broker",
            status="fail",
            detail=f"{where} did not answer CONNECT in {timeout_s:g} s: check mqtt.url and TLS",
        )
    if reason[0]:
        return Finding(
            check="broker",
            status="fail",
            detail=f"{where} refused the connection ({reason[0]}): check mqtt.username and "
            "mqtt.password / password_file against the fleet's enrollment",
        )
    return Finding(check="broker", status="ok", detail=f"connected to {where}")


def check_disk(config: AgentConfig) -> Finding:
    """Free space in the state directory for two bundles (update.max_bundle_mb) and the spool."""
    directory = config.paths.state_dir
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent  # not made yet: the file system it will be made on
    need_mb = 2 * config.update.max_bundle_mb + config.telemetry.outbox_max_mb
    try:
        free_mb = shutil.disk_usage(directory).free / 2**20
    except OSError as exc:
        return Finding(check="disk", status="fail", detail=f"cannot stat {directory}: {exc}")
    detail = (
        f"{free_mb:.0f} MiB free in {directory}; two bundles and the spool need {need_mb:.0f} MiB"
    )
    if free_mb < need_mb:
        return Finding(
            check="disk",
            status="fail",
            detail=f"{detail}: free space, or lower update.max_bundle_mb / telemetry.outbox_max_mb",
        )
    return Finding(check="disk", status="ok", detail=detail)


def diagnose(
    config: AgentConfig,
    *,
    fleet_url: str | None = None,
    profiles_dirs: list[Path] | None = None,
    timeout_s: float = 5.0,
) -> list[Finding]:
    """Every check, in the order an engineer fixes them: hardware, files, network, disk."""
    from edge_agent.keys import load_trusted_keys
    from edge_agent.profiles import load_profile

    findings: list[Finding] = []
    profile: HardwareProfile | None = None
    try:
        profile = load_profile(config.device.profile, profiles_dirs)
    except EdgeAgentError as exc:
        findings.append(Finding(check="profile", status="fail", detail=str(exc)))
    else:
        findings.append(Finding(check="profile", status="ok", detail=profile.description))
        findings.append(check_cpu(profile))
        findings.append(check_runtime(profile))
    trust = None
    try:
        trust = load_trusted_keys(list(config.paths.trusted_keys))
        findings.append(
            Finding(check="keys", status="ok", detail=f"{len(trust)} trusted key(s) loaded")
        )
    except EdgeAgentError as exc:
        findings.append(Finding(check="keys", status="fail", detail=str(exc)))
    if profile is None or trust is None:
        findings.append(
            Finding(check="bundles", status="skip", detail="needs the profile and the keys")
        )
    else:
        try:
            found = verify_bundles(config, profile=profile, trust=trust)
        except EdgeAgentError as exc:
            findings.append(Finding(check="bundles", status="fail", detail=str(exc)))
        else:
            detail = ", ".join(f"{role} {what}" for role, what in found.items())
            findings.append(
                Finding(
                    check="bundles",
                    status="ok" if found else "warn",
                    detail=f"verified: {detail}"
                    if found
                    else "no bundle on disk: set paths.initial_bundle or send one from the fleet",
                )
            )
    findings.append(check_clock(fleet_url, timeout_s=timeout_s))
    findings.append(check_broker(config.mqtt, device_id=config.device.id, timeout_s=timeout_s))
    findings.append(check_disk(config))
    return findings

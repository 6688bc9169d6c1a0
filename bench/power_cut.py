"""Power cuts: what `telemetry.sync = "normal"` loses at a cut, next to ``"full"``.

The loop of `tests.edge_agent.power_cut` (a real agent swapping bundles and
spooling windows to a real Mosquitto, on the `tests.harness.lazyfs` FUSE file
system, SIGKILLed and reverted to its fsynced image at random moments), run for
each sync mode; per cut, the windows the broker had received that the restored
spool no longer knows (their sequence numbers are reused after the restart).

    python -m bench.power_cut --cuts 50 --window-s 0.1 --max-wait-s 3
    python -m bench.run --only power_cut    # rewrites the section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.edge_agent.power_cut import Report, gaps, reused, run_cuts
from tests.harness.lazyfs import LazyFS
from tests.harness.mosquitto import Mosquitto

CUTS = 50
WINDOW_S = 0.1
MAX_WAIT_S = 3.0


def measure(
    cuts: int = CUTS, window_s: float = WINDOW_S, max_wait_s: float = MAX_WAIT_S
) -> tuple[list[tuple[Report, float]], float]:
    from edge_agent.keys import write_keypair

    why = LazyFS.unavailable()
    if why is not None:
        raise SystemExit(f"power cuts need FUSE: {why}")
    out = []
    for sync in ("full", "normal"):
        with tempfile.TemporaryDirectory(prefix=f"power-cut-{sync}-") as tmp:
            root = Path(tmp)
            keys = (root / "keys" / "signing.pem", root / "keys" / "signing.pub")
            write_keypair(*keys)
            broker = Mosquitto(root / "mosquitto")
            broker.start()
            try:
                t0 = time.monotonic()
                report = run_cuts(
                    root,
                    keys,
                    broker.port,
                    cuts=cuts,
                    sync=sync,
                    window_s=window_s,
                    max_wait_s=max_wait_s,
                )
                out.append((report, time.monotonic() - t0))
            finally:
                broker.stop()
    return out, max_wait_s


def report(results: list[tuple[Report, float]], max_wait_s: float) -> str:
    first = results[0][0]
    lines = [
        "## Power cuts",
        "",
        f"A real agent on the lazyfs FUSE file system (`tests/harness/lazyfs.py`: writes not "
        f"fsynced are lost, directory entries not fsynced are undone), swapping between two "
        f"bundles and closing a telemetry window every {first.window_s:g} s into a real "
        f"Mosquitto, is SIGKILLed and its file system reverted to the fsynced image at a "
        f"random moment (0-{max_wait_s:g} s after it serves), then restarted on it. *Lost* "
        "is what the broker had received that the restored spool no longer knows (its "
        "sequence numbers are reused after the restart): a lower bound, as a window "
        "committed but not yet published is lost unseen. lazyfs never writes back on its "
        "own, so this is the worst case; a Linux kernel writes dirty pages back within about "
        "30 s (`vm.dirty_expire_centisecs`).",
        "",
        "| sync | cuts | integrity_check | serving after | cuts losing windows | windows lost "
        "per cut (mean / max) | of the cut boot's windows | telemetry lost per cut (mean / "
        "max) | events lost | fsyncs | wall time |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rep, wall in results:
        lost = [c.lost for c in rep.cuts]
        lost_s = [c.lost_s for c in rep.cuts]
        share = sum(lost) / max(1, sum(c.boot_windows for c in rep.cuts))
        served = ", ".join(
            f"v{v[0]} {sum(c.served == v for c in rep.cuts)}"
            for v in sorted({c.served for c in rep.cuts})
        )
        lines.append(
            f"| {rep.sync} | {len(rep.cuts)} | ok after every cut | {served} "
            f"| {sum(n > 0 for n in lost)} | {statistics.mean(lost):.1f} / {max(lost)} "
            f"| {share:.0%} "
            f"| {statistics.mean(lost_s):.2f} s / {max(lost_s):.2f} s "
            f"| {sum(c.events_lost for c in rep.cuts)} | {rep.fsyncs:,} + {rep.dir_fsyncs:,} dir "
            f"| {wall:.0f} s |"
        )
    lines.append("")
    for rep, _wall in results:
        lines.append(
            f"- {rep.sync}: {len(rep.windows):,} window sequence numbers received, "
            f"{rep.replayed:,} windows received again after a cut (at-least-once), "
            f"{len(reused(rep.windows))} sequence numbers reused for another window, "
            f"{len(gaps(rep.windows))} never received."
        )
    lines += [
        "- why `normal` loses this much: in WAL mode SQLite fsyncs the WAL only at a "
        "checkpoint (every 1,000 pages by default: about 250 windows when each is "
        "acknowledged, two commits a window), so every commit since the last one is in the "
        "page cache only. Each boot here starts from a checkpointed spool (the check before "
        "it stops cleanly) and lives 0-"
        f"{max_wait_s:g} s plus its start, so a cut loses what that boot committed: the "
        "figures grow with the time since the last checkpoint, up to that interval or the "
        "kernel's writeback, whichever comes first.",
        "- the test: `pytest tests/edge_agent/test_power_cut.py` (50 cuts with "
        '`sync = "full"` and 20 ms windows, 5 with `normal`; `EDGEFLEET_POWER_CUTS=N` for '
        "more).",
        "",
    ]
    return "\n".join(lines)


def run() -> str:
    return report(*measure())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=int, default=CUTS)
    parser.add_argument("--window-s", type=float, default=WINDOW_S)
    parser.add_argument("--max-wait-s", type=float, default=MAX_WAIT_S)
    args = parser.parse_args()
    print(report(*measure(args.cuts, args.window_s, args.max_wait_s)))


if __name__ == "__main__":
    main()

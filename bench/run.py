"""Run every benchmark and write BENCHMARKS.md (machine, date, command, results).

make bench        # or: python -m bench.run
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{platform.machine()} {model}, {os.cpu_count()} cores{mem}; "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}"
    )


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import onnxruntime

    from bench import converter

    sections = [converter.run()]
    header = [
        "# edgefleet benchmarks",
        "",
        f"- machine: {machine()}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- onnxruntime {onnxruntime.__version__}",
        "- command: `make bench` (`python -m bench.run`)",
        "",
        "Ratios are measured side by side in one run; absolute times are for this machine only.",
        "",
        "",
    ]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(header) + "\n\n".join(sections))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()

"""Run every benchmark and write BENCHMARKS.md (machine, date, command, results).

make bench        # or: python -m bench.run
"""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    from converter.host import describe_host

    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        memory = ""
    return (
        f"{describe_host()}{memory}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}"
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

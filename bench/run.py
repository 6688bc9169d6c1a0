"""Run the benchmarks and write BENCHMARKS.md (machine, date, command, results per section).

make bench                          # or: python -m bench.run
python -m bench.run --only agent    # one section; the others are kept as they were

Each section is stamped with the machine, date, onnxruntime and command it was
measured with, so a section measured alone never borrows another run's stamp.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "BENCHMARKS.md"

# section name -> the module whose run() returns its Markdown, starting "## <Name>"
SECTIONS = {
    "converter": "bench.converter",
    "agent": "bench.agent",
    "provision": "bench.provision",
    "tflite": "bench.tflite",
    "fleet": "bench.fleet",
    "power_cut": "bench.power_cut",
    "soak": "bench.soak",
}

HEADER = [
    "# edgefleet benchmarks",
    "",
    "- command: `make bench` (`python -m bench.run`); one section: "
    "`python -m bench.run --only agent`",
    "- each section names the machine, date and onnxruntime it was measured with",
    "",
    "Ratios are measured side by side in one run; absolute times are for this machine only.",
    "",
]
_STAMP_KEYS = ("- machine:", "- date:", "- onnxruntime", "- command:")


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


def revision() -> str:
    """The commit measured, and whether the packages differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "edge_agent", "converter", "fleet_server"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"{head}{' with uncommitted changes to the packages' if changed else ''}"


def _split(text: str) -> tuple[list[str], dict[str, str]]:
    """The header lines and the sections (keyed by lower-case title) of a BENCHMARKS.md."""
    header: list[str] = []
    sections: dict[str, list[str]] = {}
    current: list[str] = header
    for line in text.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip().lower(), [])
        current.append(line)
    return header, {name: "\n".join(lines).strip("\n") + "\n" for name, lines in sections.items()}


def _stamped(section: str, stamp: list[str]) -> str:
    """`section` with `stamp` under its title, unless it carries one already."""
    title, _, body = section.partition("\n")
    if body.lstrip("\n").startswith(_STAMP_KEYS[0]):
        return section
    return "\n".join([title, "", *stamp, body.rstrip("\n")]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SECTIONS),
        help="run only this section (repeatable); the others stay as BENCHMARKS.md has them",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    chosen = args.only or list(SECTIONS)
    command = "`make bench` (`python -m bench.run`)"
    if args.only:
        command = f"`python -m bench.run {' '.join(f'--only {n}' for n in chosen)}`"
    measured: dict[str, str] = {}
    for name in chosen:
        before = revision()
        section = importlib.import_module(SECTIONS[name]).run()
        measured.update(stamped_section(section, command=command, before=before))
        print(f"measured {name}")
    write_sections(measured)
    print(f"wrote {OUTPUT}")


def stamped_section(section: str, *, command: str, before: str) -> dict[str, str]:
    """`section` (Markdown starting "## <Title>") stamped with the machine, date, onnxruntime,
    code and command, keyed by its lower-case title (as _split keys them)."""
    import onnxruntime

    after = revision()
    stamp = [
        f"- machine: {machine()}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- onnxruntime {onnxruntime.__version__}",
        f"- code: {before}" if after == before else f"- code: {before}, then {after}",
        f"- command: {command}",
    ]
    # kept by its title ("provision" writes "## Provisioning")
    return {
        section.partition("\n")[0].removeprefix("## ").strip().lower(): _stamped(section, stamp)
    }


def write_sections(measured: dict[str, str]) -> None:
    """Replace these sections of BENCHMARKS.md, keeping the others as they are."""
    # read only now: a run of another section that ended meanwhile is kept, not overwritten
    old_header, kept = _split(OUTPUT.read_text() if OUTPUT.exists() else "")
    # sections written before stamps were per section carry the file's header stamp
    old_stamp = [line for line in old_header if line.startswith(_STAMP_KEYS)]
    kept = {name: _stamped(text, old_stamp) for name, text in kept.items()} | measured
    order = [*SECTIONS, *(name for name in kept if name not in SECTIONS)]
    sections = [kept[name] for name in order if name in kept]
    OUTPUT.write_text("\n".join(HEADER) + "\n" + "\n".join(sections))


if __name__ == "__main__":
    main()

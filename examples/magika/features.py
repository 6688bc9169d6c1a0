"""Real inputs for magika's model: the first and last 1,024 bytes of real files.

Follows magika's own feature extraction (its config: beg_size 1024, end_size
1024, block_size 4096, padding token 256): the first block with leading
whitespace stripped gives the beginning, the last block with trailing
whitespace stripped gives the end, each padded with 256 to its size.

    python examples/magika/features.py --out magika-inputs.npy /usr/lib/python3*/json/*.py
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np

BEG, END, BLOCK, PAD = 1024, 1024, 4096, 256


def features(content: bytes) -> np.ndarray:
    beg = content[:BLOCK].lstrip()[:BEG]
    end = content[-BLOCK:].rstrip()[-END:] if content else b""
    out = np.full(BEG + END, PAD, dtype=np.int32)
    out[: len(beg)] = np.frombuffer(beg, dtype=np.uint8)
    if end:
        out[BEG + END - len(end) :] = np.frombuffer(end, dtype=np.uint8)
    return out


def sample_files(roots: Iterable[Path], count: int, *, min_size: int = 64) -> list[Path]:
    """Up to `count` readable regular files under `roots`, spread over file types."""
    by_suffix: dict[str, list[Path]] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_size >= min_size:
                    by_suffix.setdefault(path.suffix.lower(), []).append(path)
            except OSError:
                continue
    picked: list[Path] = []
    while len(picked) < count and any(by_suffix.values()):
        for suffix in sorted(by_suffix):
            if by_suffix[suffix] and len(picked) < count:
                picked.append(by_suffix[suffix].pop(0))
    return picked


def dataset(paths: Iterable[Path]) -> np.ndarray:
    rows = []
    for path in paths:
        try:
            rows.append(features(path.read_bytes()))
        except OSError:
            continue
    return np.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    np.save(args.out, dataset(args.files))


if __name__ == "__main__":
    main()

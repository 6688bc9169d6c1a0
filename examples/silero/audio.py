"""Inputs for silero-vad: 16 kHz voiced-sound chunks and the model's recurrent state.

A chunk is 512 samples (32 ms) of a harmonic series (a random pitch of 100-220 Hz,
eight harmonics falling off as 1/k) with a random loudness and a little noise:
the kind of signal the model was trained to call speech. No audio is downloaded.

    python examples/silero/audio.py --out vad.npz --chunks 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

RATE, CHUNK = 16000, 512


def voiced_chunks(n: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` samples for the model's three inputs, listed along the first axis."""
    rng = np.random.default_rng(seed)
    t = np.arange(CHUNK) / RATE
    chunks = []
    for _ in range(n):
        f0 = 100 + 120 * rng.random()
        voiced = sum(
            (0.3 / k) * np.sin(2 * np.pi * f0 * k * t + 6 * rng.random()) for k in range(1, 9)
        )
        chunks.append((rng.random() * voiced + 0.01 * rng.standard_normal(CHUNK))[None, :])
    return {
        "input": np.stack(chunks).astype(np.float32),  # [n, 1, 512]
        "state": np.zeros((n, 2, 1, 128), np.float32),  # [n, 2, batch, 128]
        "sr": np.full((n,), RATE, np.int64),  # a scalar per sample
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chunks", type=int, default=200)
    args = parser.parse_args()
    np.savez(args.out, **voiced_chunks(args.chunks))


if __name__ == "__main__":
    main()

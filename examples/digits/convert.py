"""Train the digits CNN, convert it for three profiles, and compare test accuracy.

    python examples/digits/convert.py --out build/digits

Trains the small CNN of `examples/digits/cnn.py` with PyTorch on the CPU,
converts it with `edgefleet convert --torch` (calibration, validation and label
files written next to the bundles), then prints float vs converted test
accuracy, size and latency per profile.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.digits.cnn import data, trained

PROFILES = ("x86-64-vnni", "x86-64", "jetson-orin-nano")
EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/digits"))
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    import torch

    x_train, x_test, _, y_test = data()
    with torch.no_grad():
        float_accuracy = float(
            (trained()(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
        )
    np.save(out / "calibration.npy", x_train[:256])
    np.save(out / "validation.npy", x_test)
    np.save(out / "labels.npy", y_test.astype(np.int64))
    keys = out / "keys"
    if not (keys / "signing.pem").exists():
        subprocess.run(
            [
                EDGEFLEET,
                "keys",
                "generate",
                "--private",
                str(keys / "signing.pem"),
                "--public",
                str(keys / "signing.pub"),
            ],
            check=True,
            capture_output=True,
        )
    command = [
        EDGEFLEET,
        "convert",
        "--torch",
        "examples.digits.cnn:trained",
        "--input-shape",
        "1,1,8,8",
        "--name",
        "digits-cnn",
        "--version",
        "1.0.0",
        "--calibration",
        str(out / "calibration.npy"),
        "--validation",
        str(out / "validation.npy"),
        "--labels",
        str(out / "labels.npy"),
        "--sign-key",
        str(keys / "signing.pem"),
        "--out",
        str(out / "bundles"),
        "--quiet",
    ]
    for profile in PROFILES:
        command += ["--profile", profile]
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[2])

    report = json.loads((out / "bundles" / "report.json").read_text())
    print(f"\nfloat model test accuracy: {float_accuracy:.4f}")
    for bundle in report["bundles"]:
        metrics = bundle["metrics"]
        print(
            f"{bundle['profile']:<18} {bundle['precision']:<13} test accuracy "
            f"{metrics['accuracy']:.4f} (float {metrics['reference_accuracy']:.4f}), "
            f"{bundle['size_bytes']} bytes, p50 {bundle['latency_ms']['p50']:.3f} ms"
        )


if __name__ == "__main__":
    main()

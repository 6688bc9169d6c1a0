"""Train the digits model, convert it for three profiles, and compare test accuracy.

    python examples/digits/convert.py --out build/digits

Writes digits.onnx, the calibration/validation/labels files, a signing key pair
and the bundles, then prints float vs converted test accuracy per profile.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.digits.train import train

PROFILES = ("x86-64-vnni", "x86-64", "jetson-orin-nano")
EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/digits"))
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    digits = train()
    (out / "digits.onnx").write_bytes(digits.onnx)
    np.save(out / "calibration.npy", digits.x_train[:256])
    np.save(out / "validation.npy", digits.x_test)
    np.save(out / "labels.npy", digits.y_test.astype(np.int64))
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
        str(out / "digits.onnx"),
        "--name",
        "digits",
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
    subprocess.run(command, check=True)

    report = json.loads((out / "bundles" / "report.json").read_text())
    print(f"\nfloat model test accuracy: {digits.sklearn_accuracy:.4f}")
    for bundle in report["bundles"]:
        metrics = bundle["metrics"]
        print(
            f"{bundle['profile']:<18} {bundle['precision']:<13} test accuracy "
            f"{metrics['accuracy']:.4f} (float {metrics['reference_accuracy']:.4f}), "
            f"{bundle['size_bytes']} bytes, p50 {bundle['latency_ms']['p50']:.3f} ms"
        )


if __name__ == "__main__":
    main()

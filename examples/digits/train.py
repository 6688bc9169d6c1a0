"""Train the digits example model on the CPU and export it to ONNX.

scikit-learn's bundled 8x8 digits (1,797 images, no download) and a small MLP
(64 -> 32 -> 10). The ONNX graph is written with onnx.helper from the trained
weights, so no extra converter package is needed.

    python examples/digits/train.py --out digits.onnx
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Digits:
    onnx: bytes
    x_train: np.ndarray  # float32 [n, 64], scaled to 0..1
    x_test: np.ndarray
    y_test: np.ndarray
    sklearn_accuracy: float


def train(*, hidden: int = 32, seed: int = 0, opset: int = 17) -> Digits:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.3, random_state=seed, stratify=data.target
    )
    mlp = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=600, random_state=seed)
    mlp.fit(x_train, y_train)

    w1, w2 = (w.astype(np.float32) for w in mlp.coefs_)
    b1, b2 = (b.astype(np.float32) for b in mlp.intercepts_)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["pixels", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["h_relu"]),
            helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            numpy_helper.from_array(a, n)
            for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgefleet-examples"
    )
    model.ir_version = 8 if opset > 11 else 6
    onnx.checker.check_model(model)
    return Digits(
        onnx=model.SerializeToString(),
        x_train=x_train,
        x_test=x_test,
        y_test=np.asarray(y_test),
        sklearn_accuracy=float(mlp.score(x_test, y_test)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("digits.onnx"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    digits = train(seed=args.seed)
    args.out.write_bytes(digits.onnx)
    print(
        f"wrote {args.out} ({len(digits.onnx)} bytes), test accuracy {digits.sklearn_accuracy:.3f}"
    )


if __name__ == "__main__":
    main()

"""Runs inside the TFLite tool environment (TensorFlow 2.19, numpy 1.26), never in edgefleet's.

    <tool env>/bin/python tool_main.py REQUEST.json

One process per source model: onnx2tf turns the ONNX model into a TensorFlow
SavedModel and a float32 `.tflite`; then TensorFlow's own converter makes each
requested variant from the SavedModel (float16, dynamic range, integer with
float I/O, full integer with int8/uint8 I/O, per-channel or per-tensor, the batch
axis dynamic or fixed), so
TensorFlow is imported once for all of a model's variants and profiles.

The request names the ONNX file, a work directory, the calibration arrays
(NHWC, by input name) and the variants; the last line of stdout is a JSON result:
`{"ok": true, "variants": {name: {"file": ..., "error": ...}}}` or
`{"ok": false, "error": ..., "node": ..., "op": ..., "onnx_shapes": [...]}`. It imports nothing from
edgefleet: this interpreter has other versions of everything.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

# onnx2tf downloads MS-COCO sample images for models with one RGB input unless a file of
# this name is in its working directory; it gets the model's own calibration data instead
_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def _result(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def _sample_file(work: Path, calibration: dict[str, str]) -> None:
    import numpy as np

    for path in calibration.values():
        data = np.load(path)
        if data.ndim == 4:
            rows = np.resize(data, (20, *data.shape[1:])).astype(np.float32)
            np.save(work / _SAMPLE_FILE, rows)
            return


def _node_of(onnx_path: str, node: str | None) -> tuple[str | None, list[str]]:
    """The ONNX operator of the node onnx2tf names, and its inputs' ONNX shapes."""
    if not node:
        return None, []
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    with contextlib.suppress(Exception):  # shapes are a help to the message, not a need
        model = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, str] = {}
    for info in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = f"[{','.join(str(d.dim_value) if d.dim_value else '?' for d in dims)}]"
    for init in model.graph.initializer:
        shapes[init.name] = f"[{','.join(str(d) for d in init.dims)}]"
    for n in model.graph.node:
        if n.name == node or n.name.replace(":", "__").lstrip("/") == node.lstrip("/"):
            return str(n.op_type), [shapes.get(i, "?") for i in n.input if i]
    return None, []


def _cause(exc: Exception) -> str:
    """The line of a TensorFlow error that says what went wrong (Keras puts it second)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling layer"):
        lines = lines[1:]
    first = lines[0] if lines else ""
    head, _, tail = first.partition(" for '{{node ")
    shapes = tail.partition("with input shapes: ")[2].rstrip(".")
    return f"{head} (TensorFlow shapes {shapes})" if shapes else head


def _onnx2tf(request: dict[str, Any], saved: Path, log: io.StringIO) -> dict[str, Any] | None:
    import onnx2tf  # type: ignore[import-not-found]

    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            onnx2tf.convert(
                input_onnx_file_path=request["onnx"],
                output_folder_path=str(saved),
                non_verbose=True,
                keep_shape_absolutely_input_names=request.get("keep_inputs") or None,
            )
    except SystemExit as exc:  # onnx2tf logs its error, then exits
        lines = [line for line in log.getvalue().splitlines() if "ERROR" in line or "Error" in line]
        return {"ok": False, "error": (lines[-1] if lines else f"onnx2tf exited with {exc.code}")}
    except Exception as exc:
        node = getattr(exc, "onnx_op_name", None)
        op, shapes = _node_of(request["onnx"], node)
        if isinstance(exc, ModuleNotFoundError) and "onnx2tf.ops." in str(exc):
            op = str(exc).split("onnx2tf.ops.")[-1].strip("'\" ")
            message = f"onnx2tf has no conversion for the ONNX operator {op}"
        else:
            message = f"{type(exc).__name__}: {_cause(exc)}"
        return {"ok": False, "error": message, "node": node, "op": op, "onnx_shapes": shapes}
    return None


def _converter(tf: Any, saved: Path, batch: int | None) -> Any:
    """TensorFlow's converter for the SavedModel; with `batch`, every shape in the model is
    static, the batch axis fixed to it (what edgetpu_compiler asks for)."""
    if batch is None:
        return tf.lite.TFLiteConverter.from_saved_model(str(saved))
    loaded = tf.saved_model.load(str(saved))
    serving = loaded.signatures["serving_default"]
    specs = {
        name: tf.TensorSpec([batch, *spec.shape[1:]], spec.dtype, name=name)
        for name, spec in serving.structured_input_signature[1].items()
    }
    fixed = tf.function(lambda **feed: serving(**feed)).get_concrete_function(**specs)
    return tf.lite.TFLiteConverter.from_concrete_functions([fixed], loaded)


def _variant(tf: Any, saved: Path, spec: dict[str, Any], calibration: dict[str, Any]) -> bytes:
    converter = _converter(tf, saved, spec.get("batch"))
    kind = spec["kind"]
    if kind == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif kind in ("integer", "full-integer"):
        names = list(calibration)
        count = min(len(v) for v in calibration.values())

        def representative() -> Any:
            for i in range(count):
                yield {n: tf.constant(calibration[n][i : i + 1]) for n in names}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter._experimental_disable_per_channel = not spec["per_channel"]
        if kind == "full-integer":
            io_type = {"int8": tf.int8, "uint8": tf.uint8}[spec["io"]]
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
    elif kind != "float32":
        raise ValueError(f"unknown variant kind {kind!r}")
    model: bytes = converter.convert()
    return model


def main() -> None:
    request = json.loads(Path(sys.argv[1]).read_text())
    work = Path(request["work"])
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # onnx2tf writes beside itself; nothing of it lands elsewhere
    _sample_file(work, request["calibration"])
    log = io.StringIO()
    saved = work / "saved_model"
    failure = _onnx2tf(request, saved, log)
    (work / "onnx2tf.log").write_text(log.getvalue())
    if failure is not None:
        _result(failure)
        return

    import numpy as np
    import tensorflow as tf  # type: ignore[import-untyped]

    calibration = {n: np.load(p) for n, p in request["calibration"].items()}
    variants: dict[str, dict[str, Any]] = {}
    for spec in request["variants"]:
        dest = work / f"{spec['name']}.tflite"
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                dest.write_bytes(_variant(tf, saved, spec, calibration))
            variants[spec["name"]] = {"file": str(dest), "error": None}
        except Exception as exc:
            first = str(exc).strip().splitlines()
            variants[spec["name"]] = {
                "file": None,
                "error": f"{type(exc).__name__}: {first[0] if first else ''}"[:500],
            }
            (work / f"{spec['name']}.error.txt").write_text(traceback.format_exc())
    _result({"ok": True, "variants": variants})


if __name__ == "__main__":
    main()

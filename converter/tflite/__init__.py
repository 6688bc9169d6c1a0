"""TFLite (LiteRT) targets: onnx2tf in a tool environment of its own, variants, validation.

`toolenv` manages the environment, `tool_main` runs inside it, `export` drives it,
`run` maps the ONNX model's tensors onto the TFLite file's, `variants` makes a
profile's candidates. See docs/tflite.md.
"""

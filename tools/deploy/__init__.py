"""Deployment helpers: ONNX export checked in ONNX Runtime (:mod:`backbones_tools.deploy.onnx_export`) and
conversion of foreign checkpoints to plain trunk state dicts (:mod:`backbones_tools.deploy.convert`).

Nothing is imported here, so ``backbones_tools.deploy.convert`` does not load the ONNX packages and
``backbones_tools.deploy.onnx_export`` can report them missing with a clear message.
"""

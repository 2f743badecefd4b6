"""Deployment helpers: ONNX export checked in ONNX Runtime (:mod:`tools.deploy.onnx_export`) and
conversion of foreign checkpoints to plain trunk state dicts (:mod:`tools.deploy.convert`).

Nothing is imported here, so ``tools.deploy.convert`` does not load the ONNX packages and
``tools.deploy.onnx_export`` can report them missing with a clear message.
"""

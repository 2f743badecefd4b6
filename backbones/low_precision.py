"""bf16 inference behind an fp32 interface: ``optimize_for_inference(model, dtype=torch.bfloat16)``.

The module's parameters and buffers are cast to bfloat16 after the batch norms have been folded in
fp32; its floating-point inputs are cast to bfloat16 on the way in and its floating-point outputs
back to float32 on the way out, so callers see the same types as with the fp32 model. The fused
convolutions and linear layers then run oneDNN's bf16 kernels.

Fast only on CPUs that compute in bf16 natively (AVX512-BF16, AMX) and on GPUs; elsewhere bf16 is
emulated (by oneDNN on other AVX-512 CPUs, by ATen's convolutions on AVX2-only ones, where oneDNN
refuses bf16) and inference gets several times slower. Outputs differ from fp32 by bf16 rounding
(8 bits of mantissa): state the difference for your model before relying on it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["INFERENCE_DTYPES", "check_inference_dtype", "run_in_dtype"]

#: What ``optimize_for_inference(dtype=...)`` takes.
INFERENCE_DTYPES = (torch.float32, torch.bfloat16)


def check_inference_dtype(dtype: torch.dtype) -> None:
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"optimize_for_inference: dtype must be torch.float32 or torch.bfloat16; got {dtype}")


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating-point tensor in it (nested in tuples, lists, dicts) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, dict):
        return type(value)((k, _cast(v, dtype)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def run_in_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``module`` to ``dtype`` and give it hooks that cast its inputs to ``dtype`` and its
    outputs back to float32 (nothing for float32). Returns ``module``."""
    check_inference_dtype(dtype)
    if dtype == torch.float32:
        return module
    module.to(dtype)
    module.register_forward_pre_hook(lambda _, args, kwargs: (_cast(args, dtype), _cast(kwargs, dtype)),
                                     with_kwargs=True)
    module.register_forward_hook(lambda _, args, output: _cast(output, torch.float32))
    return module

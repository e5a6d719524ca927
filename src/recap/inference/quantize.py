"""int8 dynamic quantization of a captioner for CPU inference.

`quantize_int8(model)` replaces every `nn.Linear` (BART's attention and feed-forward layers, the
LM head, the fusion and projection Linears, the music encoder's transformer) with PyTorch's
dynamically quantized Linear: weights stored as int8 (a quarter of the bytes), activations
quantized per batch on the fly. Decoding one token at a time on a CPU reads every decoder weight
per step, so it is bound by memory traffic, and a quarter of the bytes is most of the gain
(benchmarks/cpu_caption.py, docs/cpu.md). Convolutions (the music encoder's front end) stay fp32.

The captions change a little: `token_agreement` measures how much, position by position, against
the fp32 model's tokens.
"""

from __future__ import annotations

import warnings
from typing import Any

from recap.utils import RecapError

# The alignment projection runs once per song (not per decoding step), and the model reads its
# weight's dtype to cast music embeddings: it stays fp32.
KEEP_FP32 = ("align_proj",)


def quantize_int8(model: Any, inplace: bool = False) -> Any:
    """`model` with its Linear layers int8-quantized (dynamic), in eval mode, on the CPU.

    Forward hooks on the replaced Linears are kept (PyTorch's swap copies them), so the copy
    head's hook on `lm_head` still applies.
    """
    import torch
    from torch import nn

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if device.type != "cpu":
        raise RecapError(
            f"int8 dynamic quantization runs on the CPU only; the model is on {device} "
            "(load it with device='cpu', or drop --int8)"
        )
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager API still works here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        # By name, exact nn.Linear only: MultiheadAttention's out_proj (a Linear subclass whose
        # weight attention reads directly) stays fp32, and so do the modules in KEEP_FP32.
        spec = {
            name: default_dynamic_qconfig
            for name, module in model.named_modules()
            if type(module) is nn.Linear and name.split(".")[0] not in KEEP_FP32
        }
        return quantize_dynamic(model.eval(), spec, dtype=torch.qint8, inplace=inplace)


def token_agreement(a: Any, b: Any, pad_token_id: int = 1) -> float:
    """Share of positions where two batches of generated ids (B, T) hold the same token.

    Positions past the end of both rows (padding in both) are not counted; a row shorter than
    the other counts its missing positions as disagreements.
    """
    import torch

    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.dim() != 2 or b.dim() != 2 or a.size(0) != b.size(0):
        raise RecapError(f"token_agreement needs two (B, T) batches, got {a.shape} and {b.shape}")
    width = max(a.size(1), b.size(1))
    a = torch.nn.functional.pad(a, (0, width - a.size(1)), value=pad_token_id)
    b = torch.nn.functional.pad(b, (0, width - b.size(1)), value=pad_token_id)
    counted = (a != pad_token_id) | (b != pad_token_id)  # (B, T)
    if not bool(counted.any()):
        return 1.0
    return float(((a == b) & counted).sum() / counted.sum())

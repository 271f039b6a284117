"""Arithmetic precision of torch work on the CPU (teacher training, labelling, evaluation).

``bf16`` runs the forward pass under ``torch.autocast`` with bfloat16 (weights and optimizer
state stay float32). On CPUs with AVX512-BF16 or AMX (``/proc/cpuinfo`` flags ``avx512_bf16``,
``amx_bf16``) oneDNN runs those products natively, about three times faster than float32 here;
elsewhere bfloat16 is emulated and slower, so ``auto`` picks it only where the CPU has it.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16")
#: For inference (labelling, evaluation) also ``bf16-linear``: bfloat16 in every linear layer
#: but the classification head, float32 for the rest, the attention's score and mixing products
#: among it. On mpnet it labels at ~60 pairs/s here (bf16 autocast 84, fp32 24) and orders a
#: query's pairs as fp32 does (Spearman 0.998 against bf16 autocast's 0.957: the flips come from
#: the attention products in bfloat16), `BENCHMARKS.md`.
INFERENCE_PRECISIONS = (*PRECISIONS, "bf16-linear")
HEAD_PREFIXES = ("classifier", "score", "pre_classifier")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 products natively (Linux: read /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, inference: bool = False) -> str:
    """``auto`` → ``bf16`` where the CPU has native bfloat16, else ``fp32``; others as given
    (``bf16`` on a CPU without it works, slowly, with a warning)."""
    allowed = INFERENCE_PRECISIONS if inference else PRECISIONS  # bf16-linear: no training
    if precision not in allowed:
        from reranker.errors import RerankerError

        raise RerankerError(f"precision must be one of {', '.join(allowed)}, not {precision!r}")
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision in ("bf16", "bf16-linear") and not cpu_has_bf16():
        warnings.warn(
            "this CPU has no native bfloat16 (avx512_bf16/amx_bf16): bf16 will be slower than fp32",
            stacklevel=2,
        )
    return precision


def autocast(precision: str):
    """A context in which the forward pass runs in ``precision`` (resolved: fp32 or bf16)."""
    if precision == "bf16":
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bf16_linear(model, which=None) -> int:
    """Run ``model``'s ``nn.Linear`` layers (all but the classification head, or those
    ``which(name)`` picks) under bfloat16 autocast, returning float32, so that everything else
    stays float32 (``bf16-linear``, for inference); returns how many were wrapped."""
    import torch

    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if not (which(name) if which is not None else not name.startswith(HEAD_PREFIXES)):
            continue
        forward = module.forward

        def wrapped(x, _forward=forward):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return _forward(x).float()

        module.forward = wrapped
        count += 1
    return count

"""The CPU floating-point mode of processes that train or segment.

Why: the segmenter's trained weights (ESPNet, the fallback feature network of the perceptual loss and the style
distance, and the dataset's segmenter) produce activations and gradients in the subnormal range, which x86 CPUs
compute in slow microcode. Measured on one thread (docs/benchmarks.md): its forward pass 4.5x and forward +
backward 3.8x faster with subnormals flushed to zero, a CPU training step of the quality benchmark 1.8x. Values
below ~1e-38 change no loss and no picture. GPU kernels flush them already.
"""

from __future__ import annotations

import torch


def flush_denormals() -> bool:
    """Treat subnormal floats as zero in this process's CPU math; False where the CPU cannot (then nothing changes)."""
    return bool(torch.set_flush_denormal(True))

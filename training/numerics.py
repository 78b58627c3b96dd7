"""The CPU floating-point mode of training steps (every ``Trainer.run``) and of photo segmentation.

Why: the segmenter's trained weights (ESPNet, the fallback feature network of the perceptual loss and the style
distance) produce activations and gradients in the subnormal range, which x86 CPUs compute in slow microcode.
Measured on one thread (docs/benchmarks.md): its forward pass 4.5x and forward + backward 3.8x faster with
subnormals flushed to zero, a CPU training step of the quality benchmark 1.7x. Photo segmentation
(``Segmenter.segment``, outside a Trainer) runs flushed too. Values below ~1e-38 change no loss
and no picture. GPU kernels flush them already.

Scoped, not set once for the process: a test process or an add-on shares its thread with Blender, whose own code
should keep the CPU mode it expects.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def subnormals_flushed() -> Iterator[bool]:
    """Subnormal floats count as zero in this thread's CPU math inside the block (yields False where the CPU cannot,
    and then nothing changes); afterwards they are kept again, torch's default."""
    flushed = bool(torch.set_flush_denormal(True))
    try:
        yield flushed
    finally:
        if flushed:
            torch.set_flush_denormal(False)

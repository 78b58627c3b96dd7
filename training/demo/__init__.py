"""``rerender demo``: the pipeline end to end on a generated landmark (see docs/demo.md and ``pipeline``).

Importing this package imports neither bpy nor torch; the stages import what they need when they run.
"""

from .pipeline import STAGES, Demo, DemoError, DemoOptions, DemoResult, prefill_true_segmentation
from .presets import PRESETS, DemoPreset, preset

__all__ = ["Demo", "DemoError", "DemoOptions", "DemoPreset", "DemoResult", "PRESETS", "STAGES",
           "prefill_true_segmentation", "preset"]

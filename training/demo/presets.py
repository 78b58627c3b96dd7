"""Demo sizes: how many photos, how big, how long to train, how many frames.

Why presets and not a dozen flags: the demo's job is to finish in a known time on a known machine. ``tiny`` is the
CI smoke run (minutes, pictures are noise), ``small`` the README default (~15 min on a 2-core CPU), ``medium`` and
``large`` are for a GPU, where the networks and step counts approach the paper's. Photos are always rendered at
640×480 or more: smaller or ``preview`` photos give SIFT too few features, and SfM registers none of them
(measured: 12 photos at 192×144 and 16 at 320×240, preview — no initial pair). ``small`` renders them with the
``fast`` settings (half the samples of ``final``), because its photo stage took most of the demo's time and the
demo's point is training. The dataset then shrinks them to the preset's buffer size, which is where the CPU time
of training goes.

Why ``short_budget`` on the CPU presets: minutes of training on a CPU, where the paper's losses waste the budget
(config.SHORT_BUDGET says what changes and why: no GAN, a direct L1 term because the perceptual loss of the
segmenter's encoder or a shrunk random VGG19 is weak, colour-aware hard triplets); measured on the quality
benchmark with the same CPU time per configuration (docs/evaluation.md). GPU presets use the paper's losses.
Why ``train_seconds`` on ``small``: the demo is there to show training, so it gets a fixed share of the demo's
time on any machine (training/budget.py rescales the phases' step counts to the clock) instead of a step count
whose time depends on the machine. Why ``after_train_seconds``: a machine whose photos render slower would shrink
that share below half (measured: 310 s of photos on one 2-core Xeon against 284 s on another gave training 48.5 %
of the run), so training gets at least as long as the other stages together: the ones before it, as they took, and
the ones after it, as measured on the preset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class DemoPreset:
    name: str
    photos: int                 # generated tourist photos
    photo_size: tuple[int, int]  # W, H of the generated photos
    quality: str                # generator render quality: preview | final
    buffer_size: int            # long side of the dataset's photos and deep buffers
    val_count: int              # held-out views (evaluation)
    load_size: int              # training square
    crop_size: int
    batch_size: int
    steps: tuple[int, int, int, int]  # stage 1 (appearance), 2 (rerender), 3 (finetune), semantic
    network: dict[str, Any] = field(default_factory=dict)
    vgg_width_divisor: int = 1  # 1 = the real VGG19 (ImageNet weights when available)
    frames: int = 24            # rendered frames of the camera path
    frame_size: tuple[int, int] = (320, 240)
    eval_pairs: int = 4         # appearance-transfer pairs of the ground-truth evaluation
    poses: str = "sfm"          # sfm: full pycolmap SfM; known: triangulate with the true cameras (known_poses.py)
    min_coverage: float = 0.05  # drop views whose deep buffer covers less (sparse clouds of small runs cover little)
    short_budget: bool = False  # train with config.SHORT_BUDGET's losses (the CPU presets; see below)
    train_seconds: float = 0.0  # > 0: staged training is fitted to this wall-clock time (steps give the ratios)
    after_train_seconds: float = 0.0  # the stages after training (evaluate, shot, frames, media) on a 2-core CPU

    def train_budget(self, seconds_before: float) -> float:
        """Wall-clock seconds of training: ``train_seconds``, or as long as every other stage together when the
        stages before it (``seconds_before``) and those after it (``after_train_seconds``) take longer."""
        return max(self.train_seconds, seconds_before + self.after_train_seconds)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, DemoPreset] = {
    "tiny": DemoPreset("tiny", photos=8, photo_size=(640, 480), quality="final", buffer_size=96, val_count=1,
                       load_size=64, crop_size=32, batch_size=2, steps=(4, 6, 4, 4),
                       network={"base_channels": 8, "depth": 3, "max_channels": 32, "encoder_channels": 8,
                                "encoder_blocks": 2},
                       vgg_width_divisor=8, frames=6, frame_size=(64, 48), eval_pairs=2, poses="known",
                       min_coverage=0.0, short_budget=True),
    "small": DemoPreset("small", photos=36, photo_size=(640, 480), quality="fast", buffer_size=160, val_count=3,
                        load_size=128, crop_size=96, batch_size=4, steps=(100, 450, 250, 40),
                        network={"base_channels": 16, "depth": 4, "max_channels": 128, "encoder_channels": 16,
                                 "encoder_blocks": 3},
                        vgg_width_divisor=4, frames=24, frame_size=(160, 120), eval_pairs=6, short_budget=True,
                        train_seconds=420.0, after_train_seconds=80.0),
    "medium": DemoPreset("medium", photos=120, photo_size=(640, 480), quality="final", buffer_size=512,
                         val_count=10, load_size=256, crop_size=256, batch_size=8,
                         steps=(2000, 20000, 8000, 4000), frames=72, frame_size=(640, 480), eval_pairs=20),
    "large": DemoPreset("large", photos=400, photo_size=(1024, 768), quality="final", buffer_size=1024,
                        val_count=40, load_size=512, crop_size=256, batch_size=8,
                        steps=(20000, 200000, 100000, 50000), frames=120, frame_size=(1024, 768), eval_pairs=100),
}


def preset(name: str, **overrides: Any) -> DemoPreset:
    """A preset by name, with fields overridden (``photos=60``, ``eval_pairs=50`` ...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown demo size {name!r}; choose one of {', '.join(PRESETS)}")
    clean = {k: v for k, v in overrides.items() if v is not None}
    return replace(PRESETS[name], **clean)

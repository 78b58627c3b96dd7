"""Plain-data descriptions of a synthetic collection: cameras, appearances, transients, the scene, render settings.

Why plain dataclasses with JSON round trips: the ground truth written next to the photos must be enough to rebuild
the very same scene in a fresh process (``render_view``), and the evaluation re-renders any camera under any
appearance. Nothing here imports bpy, so the dataset builder and the evaluation can read ground truth without
Blender.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

SCENE_FORMAT = "rerender-synthetic-scene"
SCENE_VERSION = 1

APPEARANCE_KINDS = ("day", "sunset", "overcast", "night")
TRANSIENT_KINDS = ("person", "car")


def _from_dict(cls, data: dict[str, Any], what: str):
    """Build a dataclass from a dict, naming missing or unknown keys so a hand-edited JSON file fails clearly."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{what}: unknown keys {sorted(unknown)}; expected {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ValueError(f"{what}: {exc}") from None


@dataclass
class PhotoCamera:
    """A PINHOLE camera in COLMAP's convention: x right, y down, z forward; ``R``, ``t`` map world -> camera."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    R: list[list[float]]
    t: list[float]

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera {self.name!r}: width and height must be positive, got {self.width}x{self.height}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"camera {self.name!r}: focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        R = np.asarray(self.R, dtype=np.float64)
        if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
            raise ValueError(f"camera {self.name!r}: R must be a 3x3 rotation matrix (orthonormal, det +1)")
        if len(self.t) != 3:
            raise ValueError(f"camera {self.name!r}: t must have 3 values, got {len(self.t)}")
        self.R = R.tolist()
        self.t = [float(v) for v in self.t]

    @property
    def center(self) -> np.ndarray:
        """Camera center in world coordinates (C = -R^T t)."""
        return -np.asarray(self.R).T @ np.asarray(self.t)

    def scaled_to(self, width: int, height: int) -> "PhotoCamera":
        """The same camera at another resolution (intrinsics scale with the image)."""
        sx, sy = width / self.width, height / self.height
        return PhotoCamera(self.name, width, height, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy,
                           self.R, self.t)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PhotoCamera":
        data = {k: v for k, v in data.items() if k != "matrix_world"}  # derived, written for Blender users
        return _from_dict(cls, data, "camera")


@dataclass
class PhotoConditions:
    """Everything that makes one photo's look: light, weather and the camera's exposure and white balance.

    Angles are in degrees; the sun azimuth is measured from +X towards +Y (world), the landmark faces -Y.
    ``fog_density`` is an extinction per metre (0 = clear air); ``night_lights`` scales the artificial lights
    (street lamps, floodlights, lit windows; 0 = off).
    """

    kind: str
    sun_elevation_deg: float
    sun_azimuth_deg: float
    sun_strength: float
    sun_color: list[float]
    sun_angle_deg: float
    sky_strength: float
    cloud_cover: float
    cloud_color: list[float]
    air_density: float
    aerosol_density: float
    night_lights: float
    lamp_color: list[float]
    fog_density: float
    fog_color: list[float]
    exposure_ev: float
    white_balance_temperature: float
    white_balance_tint: float

    def __post_init__(self) -> None:
        if self.kind not in APPEARANCE_KINDS:
            raise ValueError(f"appearance kind must be one of {APPEARANCE_KINDS}, got {self.kind!r}")
        for name in ("sun_color", "cloud_color", "lamp_color", "fog_color"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"appearance {name} must be an RGB triple, got {value!r}")
            setattr(self, name, [float(v) for v in value])
        if self.fog_density < 0 or self.sun_strength < 0 or self.night_lights < 0:
            raise ValueError("appearance fog_density, sun_strength and night_lights must be >= 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PhotoConditions":
        return _from_dict(cls, data, "appearance")


@dataclass
class Transient:
    """One transient object: a person (capsule body + head) or a car (body, cabin, wheels), on the ground."""

    kind: str
    x: float
    y: float
    heading_deg: float
    scale: float
    color: list[float]

    def __post_init__(self) -> None:
        if self.kind not in TRANSIENT_KINDS:
            raise ValueError(f"transient kind must be one of {TRANSIENT_KINDS}, got {self.kind!r}")
        self.color = [float(v) for v in self.color]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Transient":
        return _from_dict(cls, data, "transient")


@dataclass
class RenderSettings:
    """EEVEE settings of the photo render. ``final`` matches the measured settings that SfM registers;
    ``fast`` halves its samples (the default demo: its photo stage was most of its time); ``preview`` is for
    tests and known-pose collections (a quarter of the samples)."""

    samples: int = 8
    filter_px: float = 1.5
    shadows: bool = True
    jpeg_quality: int = 92

    @classmethod
    def preset(cls, name: str) -> "RenderSettings":
        presets = {"final": cls(), "fast": cls(samples=4), "preview": cls(samples=2, filter_px=1.5, shadows=True,
                                                                          jpeg_quality=92)}
        if name not in presets:
            raise ValueError(f"unknown render quality {name!r}; choose one of {sorted(presets)}")
        return presets[name]


@dataclass
class SceneSpec:
    """The scene description: enough to rebuild the landmark, ground and props identically in a fresh process.

    The landmark's proportions come from ``seed``-independent defaults plus ``landmark`` overrides, so changing the
    photo seed never moves the building (cameras of two collections with different seeds see the same place).
    """

    seed: int
    landmark: dict[str, float] = field(default_factory=dict)
    render: RenderSettings = field(default_factory=RenderSettings)
    format: str = SCENE_FORMAT
    version: int = SCENE_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "version": self.version, "seed": self.seed, "landmark": dict(self.landmark),
                "render": asdict(self.render)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SceneSpec":
        if data.get("format") != SCENE_FORMAT:
            raise ValueError(f"not a synthetic scene description (format {data.get('format')!r}, "
                             f"expected {SCENE_FORMAT!r})")
        if int(data.get("version", -1)) > SCENE_VERSION:
            raise ValueError(f"scene description version {data['version']} is newer than this code "
                             f"({SCENE_VERSION}); update rerender")
        return cls(seed=int(data["seed"]), landmark=dict(data.get("landmark", {})),
                   render=_from_dict(RenderSettings, data.get("render", {}), "render settings"))


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (write then rename) so an interrupted run never leaves half a ground-truth file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (generate the collection with `rerender synth`)")
    return json.loads(path.read_text())

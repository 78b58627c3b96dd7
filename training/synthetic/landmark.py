"""The procedural landmark's layout as plain data: parts (shape, size, material, semantic class) in world metres.

Why plain data, separate from bpy: the sampler needs the plaza and road regions to put people and cars in, tests
need known surface points of the building to check projections, and the Blender builder needs the same numbers.
One layout, three readers.

The landmark stands at the origin and faces -Y (its portico, steps and twin towers are on the -Y side), like a
basilica on a square: a nave with a dome on a drum, a back apse, an asymmetric side chapel (so the left and right
halves differ: SfM must never confuse them), a paved square, a road with cars in front, lawns, trees and lamp posts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...bridge.classes import DEFAULT_CLASSES

BUILDING = DEFAULT_CLASSES.id_of("building")
ROAD = DEFAULT_CLASSES.id_of("road")
SIDEWALK = DEFAULT_CLASSES.id_of("sidewalk")
POLE = DEFAULT_CLASSES.id_of("pole")
VEGETATION = DEFAULT_CLASSES.id_of("vegetation")
TERRAIN = DEFAULT_CLASSES.id_of("terrain")
SKY = DEFAULT_CLASSES.id_of("sky")
PERSON = DEFAULT_CLASSES.id_of("person")
CAR = DEFAULT_CLASSES.id_of("car")

DEFAULT_LANDMARK: dict[str, float] = {
    "nave_half_width": 11.0, "nave_half_depth": 9.0, "nave_height": 14.0,
    "tower_size": 5.5, "tower_height": 25.0, "tower_roof": 6.0,
    "dome_radius": 6.5, "drum_height": 4.0,
    "column_count": 6, "column_height": 9.0, "column_radius": 0.55,
    "road_near_y": -24.0, "road_far_y": -30.0,
}


@dataclass(frozen=True)
class Part:
    """One solid of the scene. ``shape`` is box | cylinder | frustum | dome | sphere | gable | plane;
    ``params`` its dimensions (see ``meshes.mesh_for_part``)."""

    name: str
    shape: str
    params: dict[str, Any]
    material: str
    label: int


@dataclass(frozen=True)
class Region:
    """An axis-aligned ground rectangle where transients may stand."""

    x0: float
    x1: float
    y0: float
    y1: float


def landmark_params(overrides: dict[str, float] | None = None) -> dict[str, float]:
    """Defaults merged with overrides; unknown keys are an error (a typo must not silently build the default)."""
    params = dict(DEFAULT_LANDMARK)
    for key, value in (overrides or {}).items():
        if key not in params:
            raise ValueError(f"unknown landmark parameter {key!r}; known: {', '.join(sorted(params))}")
        params[key] = float(value)
    return params


def layout(overrides: dict[str, float] | None = None) -> list[Part]:
    """All static parts of the scene (landmark, ground, trees, lamp posts)."""
    p = landmark_params(overrides)
    hw, hd, nh = p["nave_half_width"], p["nave_half_depth"], p["nave_height"]
    ts, th = p["tower_size"], p["tower_height"]
    parts: list[Part] = [
        Part("nave", "box", {"x": (-hw, hw), "y": (-hd, hd), "z": (0.0, nh)}, "stone", BUILDING),
        Part("nave_roof", "gable", {"x": (-hw, hw), "y": (-hd, hd), "z": (nh, nh + 3.0), "axis": "y"}, "slate", BUILDING),
        Part("apse", "cylinder", {"c": (0.0, hd), "r": hw * 0.55, "z": (0.0, nh * 0.72), "n": 24}, "stone", BUILDING),
        Part("apse_roof", "dome", {"c": (0.0, hd, nh * 0.72), "r": hw * 0.55, "n": 24}, "slate", BUILDING),
        Part("drum", "cylinder", {"c": (0.0, 1.0), "r": p["dome_radius"], "z": (nh, nh + p["drum_height"]), "n": 32},
             "stone", BUILDING),
        Part("dome", "dome", {"c": (0.0, 1.0, nh + p["drum_height"]), "r": p["dome_radius"], "n": 32}, "copper", BUILDING),
        Part("lantern", "cylinder", {"c": (0.0, 1.0), "r": 1.2,
                                     "z": (nh + p["drum_height"] + p["dome_radius"] - 0.3,
                                           nh + p["drum_height"] + p["dome_radius"] + 2.2), "n": 12}, "stone", BUILDING),
        Part("lantern_cap", "frustum", {"c": (0.0, 1.0), "r": (1.5, 0.05),
                                        "z": (nh + p["drum_height"] + p["dome_radius"] + 2.2,
                                              nh + p["drum_height"] + p["dome_radius"] + 4.5), "n": 12},
             "copper", BUILDING),
        # Side chapel on +X only: breaks the left/right symmetry.
        Part("chapel", "box", {"x": (hw, hw + 7.0), "y": (-1.0, 7.0), "z": (0.0, 8.0)}, "stone", BUILDING),
        Part("chapel_roof", "gable", {"x": (hw, hw + 7.0), "y": (-1.0, 7.0), "z": (8.0, 10.5), "axis": "x"},
             "slate", BUILDING),
        # Portico: steps, columns, entablature, pediment.
        Part("steps_1", "box", {"x": (-9.0, 9.0), "y": (-15.0, -hd), "z": (0.0, 0.3)}, "stone", BUILDING),
        Part("steps_2", "box", {"x": (-8.5, 8.5), "y": (-14.4, -hd), "z": (0.3, 0.6)}, "stone", BUILDING),
        Part("steps_3", "box", {"x": (-8.0, 8.0), "y": (-13.8, -hd), "z": (0.6, 0.9)}, "stone", BUILDING),
        Part("entablature", "box", {"x": (-8.0, 8.0), "y": (-13.6, -hd), "z": (0.9 + p["column_height"],
                                                                          2.2 + p["column_height"])},
             "stone", BUILDING),
        Part("pediment", "gable", {"x": (-8.0, 8.0), "y": (-13.6, -hd), "z": (2.2 + p["column_height"],
                                                                          5.0 + p["column_height"]), "axis": "y"},
             "slate", BUILDING),
        Part("door", "box", {"x": (-1.8, 1.8), "y": (-hd - 0.08, -hd), "z": (0.9, 6.0)}, "window", BUILDING),
        # Ground: lawn everywhere, paved squares, the road in front.
        Part("lawn", "plane", {"x": (-300.0, 300.0), "y": (-300.0, 300.0), "z": 0.0}, "grass", TERRAIN),
        Part("square_back", "plane", {"x": (-32.0, 32.0), "y": (p["road_near_y"], 16.0), "z": 0.01}, "paving", SIDEWALK),
        Part("road", "plane", {"x": (-160.0, 160.0), "y": (p["road_far_y"], p["road_near_y"]), "z": 0.015}, "asphalt",
             ROAD),
        Part("square_front", "plane", {"x": (-48.0, 48.0), "y": (-62.0, p["road_far_y"]), "z": 0.01}, "paving",
             SIDEWALK),
    ]
    for side, sx in (("left", -1.0), ("right", 1.0)):
        cx = sx * (hw + 1.0 - ts / 2)
        cy = -hd - 1.0 + ts / 2
        parts.append(Part(f"tower_{side}", "box", {"x": (cx - ts / 2, cx + ts / 2), "y": (cy - ts / 2, cy + ts / 2),
                                                     "z": (0.0, th)}, "stone", BUILDING))
        parts.append(Part(f"tower_{side}_roof", "frustum", {"c": (cx, cy), "r": (ts * 0.72, 0.1), "z": (th, th + p["tower_roof"]),
                                                             "n": 4, "rotate_deg": 45.0}, "slate", BUILDING))
        for k, z in enumerate((6.0, 11.5, 17.0)):
            parts.append(Part(f"tower_{side}_window_{k}", "box", {"x": (cx - 0.7, cx + 0.7), "y": (cy - ts / 2 - 0.08, cy - ts / 2),
                                                                   "z": (z, z + 2.6)}, "window", BUILDING))
        for k, y in enumerate((-4.0, 2.0)):
            parts.append(Part(f"nave_{side}_window_{k}", "box", {"x": sorted((sx * hw, sx * (hw + 0.08))), "y": (y - 0.9, y + 0.9),
                                                                  "z": (6.0, 10.5)}, "window", BUILDING))
    # The clock: only on the left tower.
    parts.append(Part("clock", "disc_y", {"c": (-(hw + 1.0 - ts / 2), -hd - 1.0 - 0.06, th - 2.6), "r": 1.3, "n": 24},
                      "clock", BUILDING))
    n = int(p["column_count"])
    for k, x in enumerate(np.linspace(-7.0, 7.0, n)):
        parts.append(Part(f"column_{k}", "cylinder", {"c": (float(x), -12.8), "r": p["column_radius"],
                                                      "z": (0.9, 0.9 + p["column_height"]), "n": 16}, "marble", BUILDING))
    for k, (x, y) in enumerate(_tree_positions(p)):
        parts.append(Part(f"tree_{k}_trunk", "cylinder", {"c": (x, y), "r": 0.25, "z": (0.0, 2.6), "n": 8},
                          "bark", VEGETATION))
        parts.append(Part(f"tree_{k}_crown", "sphere", {"c": (x, y, 4.3), "r": 2.2 + 0.3 * (k % 3), "n": 12},
                          "foliage", VEGETATION))
    for k, (x, y) in enumerate(lamp_positions(overrides)):
        parts.append(Part(f"lamp_{k}_post", "cylinder", {"c": (x, y), "r": 0.09, "z": (0.0, 4.6), "n": 8},
                          "metal", POLE))
        parts.append(Part(f"lamp_{k}_head", "sphere", {"c": (x, y, 4.8), "r": 0.3, "n": 8}, "lamp_glass", POLE))
    return parts


def _tree_positions(p: dict[str, float]) -> list[tuple[float, float]]:
    trees = [(sx * x, p["road_far_y"] - 2.5) for sx in (-1, 1) for x in (20.0, 28.0, 36.0, 44.0)]
    trees += [(sx * 24.0, y) for sx in (-1, 1) for y in (-8.0, 0.0, 8.0)]
    trees.remove((24.0, 0.0))  # the chapel side stays open: more asymmetry
    return trees


def lamp_positions(overrides: dict[str, float] | None = None) -> list[tuple[float, float]]:
    """Street lamps along the road (the night lights hang here)."""
    p = landmark_params(overrides)
    return [(x, p["road_near_y"] + 0.8) for x in (-20.0, -10.0, 10.0, 20.0)] + \
           [(x, p["road_far_y"] - 0.8) for x in (-26.0, -13.0, 0.0, 13.0, 26.0)]


def floodlight_positions(overrides: dict[str, float] | None = None) -> list[tuple[float, float, float]]:
    """Ground floodlights that light the facade at night."""
    p = landmark_params(overrides)
    hd = p["nave_half_depth"]
    return [(-12.0, -hd - 9.0, 1.0), (0.0, -hd - 7.5, 1.5), (12.0, -hd - 9.0, 1.0), (0.0, -hd - 3.0, 12.0)]


def obstacles(overrides: dict[str, float] | None = None) -> list[tuple[float, float, float]]:
    """(x, y, radius) discs no camera or person may stand in: tree crowns and lamp posts."""
    p = landmark_params(overrides)
    return [(x, y, 3.4) for x, y in _tree_positions(p)] + [(x, y, 0.8) for x, y in lamp_positions(overrides)]


def person_regions(overrides: dict[str, float] | None = None) -> list[Region]:
    """Where people stand: the square behind the road (in front of the steps) and the front square."""
    p = landmark_params(overrides)
    return [Region(-26.0, 26.0, p["road_near_y"] + 0.3, -15.3), Region(-30.0, 30.0, -44.0, p["road_far_y"] - 0.5)]


def car_lanes(overrides: dict[str, float] | None = None) -> list[tuple[float, float]]:
    """Lane centre lines (y, heading in degrees) of the road in front."""
    p = landmark_params(overrides)
    mid = (p["road_near_y"] + p["road_far_y"]) / 2
    return [(mid + 1.5, 0.0), (mid - 1.5, 180.0)]


def key_points(overrides: dict[str, float] | None = None) -> dict[str, tuple[float, float, float]]:
    """Named points on the building's visible surfaces (for projection checks). Each lies on a front face,
    a little inside its edges, where nothing of the landmark hides it from the square."""
    p = landmark_params(overrides)
    hw, hd, th = p["nave_half_width"], p["nave_half_depth"], p["tower_height"]
    front = -hd - 1.0  # the towers' front faces
    out = {}
    for side, sx in (("left", -1.0), ("right", 1.0)):
        outer_x = sx * (hw + 1.0)
        out[f"tower_{side}_top_outer_corner"] = (outer_x - sx * 0.4, front, th - 0.4)
    out["pediment_base_center"] = (0.0, -13.6, 0.9 + p["column_height"] + 0.6)
    return out

"""Vertex/face lists (numpy, no bpy) for the simple solids the scene is made of.

Why not ``bpy.ops.mesh.primitive_*``: operators depend on the UI context and on the active scene; building
from plain arrays with ``Mesh.from_pydata`` works the same in any process and is easy to check.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Mesh = tuple[np.ndarray, list[tuple[int, ...]]]


def box(x: tuple[float, float], y: tuple[float, float], z: tuple[float, float]) -> Mesh:
    (x0, x1), (y0, y1), (z0, z1) = x, y, z
    v = np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0],
                  [x0, y0, z1], [x1, y0, z1], [x1, y1, z1], [x0, y1, z1]], dtype=np.float64)
    f = [(0, 3, 2, 1), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7)]
    return v, f


def plane(x: tuple[float, float], y: tuple[float, float], z: float) -> Mesh:
    (x0, x1), (y0, y1) = x, y
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=np.float64), [(0, 1, 2, 3)]


def frustum(c: tuple[float, float], r: tuple[float, float], z: tuple[float, float], n: int,
            rotate_deg: float = 0.0) -> Mesh:
    """A closed truncated cone (n = 4 gives a square pyramid roof); r = (bottom, top)."""
    a = np.radians(rotate_deg) + np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([np.cos(a), np.sin(a)], axis=1)
    bottom = np.column_stack([c[0] + r[0] * ring[:, 0], c[1] + r[0] * ring[:, 1], np.full(n, z[0])])
    top = np.column_stack([c[0] + r[1] * ring[:, 0], c[1] + r[1] * ring[:, 1], np.full(n, z[1])])
    v = np.concatenate([bottom, top])
    f = [(i, (i + 1) % n, n + (i + 1) % n, n + i) for i in range(n)]
    f.append(tuple(range(n - 1, -1, -1)))
    f.append(tuple(range(n, 2 * n)))
    return v, f


def cylinder(c: tuple[float, float], r: float, z: tuple[float, float], n: int) -> Mesh:
    return frustum(c, (r, r), z, n)


def sphere(c: tuple[float, float, float], r: float, n: int, *, top_half: bool = False) -> Mesh:
    """A UV sphere (or its upper half, closed at the equator: a dome)."""
    rings = max(3, n // 2)
    if top_half:
        lat = np.linspace(0.0, np.pi / 2, rings // 2 + 2)[:-1]  # equator .. last ring below the pole
    else:
        lat = np.linspace(-np.pi / 2, np.pi / 2, rings + 1)[1:-1]  # poles are added as single vertices
    lon = np.linspace(0, 2 * np.pi, n, endpoint=False)
    verts = [[c[0] + r * math.cos(b) * math.cos(a), c[1] + r * math.cos(b) * math.sin(a), c[2] + r * math.sin(b)]
             for b in lat for a in lon]
    verts.append([c[0], c[1], c[2] + r])
    faces: list[tuple[int, ...]] = []
    for i in range(len(lat) - 1):
        for j in range(n):
            a0, a1 = i * n + j, i * n + (j + 1) % n
            faces.append((a0, a1, a1 + n, a0 + n))
    top = len(verts) - 1
    last = (len(lat) - 1) * n
    faces += [(last + j, last + (j + 1) % n, top) for j in range(n)]
    if top_half:
        faces.append(tuple(range(n - 1, -1, -1)))
    else:
        verts.append([c[0], c[1], c[2] - r])
        bottom = len(verts) - 1
        faces += [((j + 1) % n, j, bottom) for j in range(n)]
    return np.array(verts, dtype=np.float64), faces


def gable(x: tuple[float, float], y: tuple[float, float], z: tuple[float, float], axis: str) -> Mesh:
    """A triangular prism roof whose ridge runs along ``axis`` ('x' or 'y')."""
    (x0, x1), (y0, y1), (z0, z1) = x, y, z
    if axis == "y":
        xm = (x0 + x1) / 2
        v = [[x0, y0, z0], [x1, y0, z0], [xm, y0, z1], [x0, y1, z0], [x1, y1, z0], [xm, y1, z1]]
    elif axis == "x":
        ym = (y0 + y1) / 2
        v = [[x0, y0, z0], [x0, y1, z0], [x0, ym, z1], [x1, y0, z0], [x1, y1, z0], [x1, ym, z1]]
    else:
        raise ValueError(f"gable axis must be 'x' or 'y', got {axis!r}")
    f = [(0, 2, 1), (3, 4, 5), (0, 1, 4, 3), (1, 2, 5, 4), (2, 0, 3, 5)]
    return np.array(v, dtype=np.float64), f


def disc_y(c: tuple[float, float, float], r: float, n: int) -> Mesh:
    """A flat disc facing -Y (a clock face on a front wall)."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    v = np.column_stack([c[0] + r * np.cos(a), np.full(n, c[1]), c[2] + r * np.sin(a)])
    return v, [tuple(range(n))]


def mesh_for_part(shape: str, params: dict[str, Any]) -> Mesh:
    builders = {
        "box": lambda p: box(p["x"], p["y"], p["z"]),
        "plane": lambda p: plane(p["x"], p["y"], p["z"]),
        "cylinder": lambda p: cylinder(p["c"], p["r"], p["z"], p["n"]),
        "frustum": lambda p: frustum(p["c"], p["r"], p["z"], p["n"], p.get("rotate_deg", 0.0)),
        "sphere": lambda p: sphere(p["c"], p["r"], p["n"]),
        "dome": lambda p: sphere(p["c"], p["r"], p["n"], top_half=True),
        "gable": lambda p: gable(p["x"], p["y"], p["z"], p["axis"]),
        "disc_y": lambda p: disc_y(p["c"], p["r"], p["n"]),
    }
    if shape not in builders:
        raise ValueError(f"unknown part shape {shape!r}; known: {', '.join(builders)}")
    return builders[shape](params)


def person_mesh(height: float = 1.72) -> tuple[Mesh, list[int]]:
    """A capsule body with a head, origin at the feet; material index 0 = clothes, 1 = skin."""
    body_top = height * 0.80
    parts = [cylinder((0.0, 0.0), 0.2, (0.0, body_top - 0.2), 10), sphere((0.0, 0.0, body_top - 0.2), 0.2, 10),
             sphere((0.0, 0.0, height - 0.12), 0.12, 10)]
    return _merge(parts, [0, 0, 1])


def car_mesh() -> tuple[Mesh, list[int]]:
    """A car along +X, origin on the ground at its centre; material index 0 = paint, 1 = glass, 2 = tyres."""
    parts = [box((-2.1, 2.1), (-0.9, 0.9), (0.3, 1.0)), box((-1.2, 0.9), (-0.8, 0.8), (1.0, 1.5))]
    mats = [0, 1]
    for x in (-1.35, 1.35):
        for y in (-0.8, 0.8):
            v, f = cylinder((x, 0.0), 0.33, (-0.12, 0.12), 12)
            v = v[:, [0, 2, 1]]  # axis along y: swap y and z
            v[:, 1] += y
            v[:, 2] += 0.33
            f = [tuple(reversed(face)) for face in f]  # the swap mirrored the winding
            parts.append((v, f))
            mats.append(2)
    return _merge(parts, mats)


def _merge(parts: list[Mesh], materials: list[int]) -> tuple[Mesh, list[int]]:
    verts, faces, face_mats, offset = [], [], [], 0
    for (v, f), m in zip(parts, materials):
        verts.append(v)
        faces += [tuple(i + offset for i in face) for face in f]
        face_mats += [m] * len(f)
        offset += len(v)
    return (np.concatenate(verts), faces), face_mats

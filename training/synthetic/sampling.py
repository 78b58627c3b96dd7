"""Seeded sampling of what varies from photo to photo: viewpoint, appearance, transient objects.

Why a separate, bpy-free module: the whole ground truth of a collection is decided here before anything renders,
from one ``numpy.random.Generator`` per photo (seeded by collection seed and photo index), so a photo's parameters
never depend on how many photos came before it or on render order, and the same seed gives the same collection.
"""

from __future__ import annotations

import numpy as np

from .geometry import make_camera
from .landmark import car_lanes, obstacles, person_regions
from .spec import PhotoConditions, PhotoCamera, Transient

# Tourist viewpoints (reconstruction-facts.md): an arc in front of the landmark.
AZIMUTH_RANGE_DEG = (-65.0, 65.0)  # from the -Y axis (straight in front), positive towards +X
DISTANCE_RANGE_M = (24.0, 42.0)
HEIGHT_RANGE_M = (1.5, 10.0)
FOCAL_RANGE_MM = (22.0, 45.0)
ROLL_STD_DEG = 1.5
MIN_VIEW_WIDTH_M = 20.0
EXPOSURE_RANGE_EV = 0.6
# Sunny photos come from a few visits, as a real collection's do (tourists come at the hours the place is open): a
# visit is one sun position, and its photos share their shadows within a few degrees. Sun directions drawn
# independently per photo move every shadow between any two photos, and with the sun strong enough for a day to
# read as a day, SfM then registered 27 of the demo's 36 photos instead of 34 (docs/synthetic.md).
DAY_VISITS = ((215.0, 240.0), (255.0, 285.0), (300.0, 325.0))  # sun azimuth ranges: morning, midday, afternoon
VISIT_JITTER_DEG = (4.0, 3.0)  # azimuth, elevation spread of the photos of one visit


def photo_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Independent random stream per (collection seed, photo, purpose)."""
    return np.random.default_rng([int(seed), int(index), int(stream)])


def photo_name(index: int) -> str:
    return f"photo_{index:04d}"


def sample_camera(seed: int, index: int, width: int, height: int,
                  landmark: dict[str, float] | None = None) -> PhotoCamera:
    """A tourist's viewpoint on the arc in front of the landmark, never inside a tree or a lamp post."""
    rng = photo_rng(seed, index, 0)
    blocked = obstacles(landmark)
    while True:
        azimuth = np.radians(rng.uniform(*AZIMUTH_RANGE_DEG))
        distance = rng.uniform(*DISTANCE_RANGE_M)
        center = (distance * np.sin(azimuth), -distance * np.cos(azimuth), rng.uniform(*HEIGHT_RANGE_M))
        if all(np.hypot(center[0] - x, center[1] - y) > r for x, y, r in blocked):
            break
    target = (rng.normal(0.0, 3.0), rng.normal(-3.0, 2.0), rng.uniform(4.0, 11.0))
    # Tourists frame the landmark: the view is at least MIN_VIEW_WIDTH_M wide at the facade (about 11 m in
    # front of the landmark's center).
    longest = min(FOCAL_RANGE_MM[1], max(FOCAL_RANGE_MM[0], (distance - 11.0) * 36.0 / MIN_VIEW_WIDTH_M))
    focal = rng.uniform(FOCAL_RANGE_MM[0], longest)
    roll = float(np.clip(rng.normal(0.0, ROLL_STD_DEG), -4.0, 4.0))
    return make_camera(photo_name(index), center, target, focal_mm=focal, width=width, height=height, roll_deg=roll)


def appearance_schedule(count: int, seed: int) -> list[str]:
    """The kind of light of each photo. Counts are fixed fractions (so a 4-photo test set still has a night photo
    and daylight ones), the order is shuffled by the seed. 1-2 night photos per 20, as in real collections."""
    if count <= 0:
        return []
    n_night = max(1, round(count * 0.075)) if count >= 2 else 0
    n_sunset = round(count * 0.15)
    n_overcast = round(count * 0.2)
    n_day = max(0, count - n_night - n_sunset - n_overcast)
    kinds = ["night"] * n_night + ["sunset"] * n_sunset + ["overcast"] * n_overcast + ["day"] * n_day
    kinds = kinds[:count]
    order = np.random.default_rng([int(seed), 7]).permutation(len(kinds))
    shuffled = [kinds[i] for i in order]
    if count >= 2 and shuffled[0] == "night":  # photo 0 is the collection's thumbnail: keep it a daylight one
        j = next(i for i, k in enumerate(shuffled) if k != "night")
        shuffled[0], shuffled[j] = shuffled[j], shuffled[0]
    return shuffled


def sun_visits(seed: int) -> dict[str, list[tuple[float, float]]]:
    """(elevation, azimuth) of each sunny visit and of the sunset visit of a collection, from its seed."""
    rng = np.random.default_rng([int(seed), 11])
    day = [(float(rng.uniform(28.0, 55.0)), float(rng.uniform(*az))) for az in DAY_VISITS]
    # The golden hour's photo is of the lit facade: a sunset visit with the sun behind the landmark gave facades in
    # shade under a warm bright sky, the picture of an overcast day with a warm white balance.
    sunset = [(float(rng.uniform(4.0, 7.0)), float(rng.uniform(235.0, 305.0)))]
    return {"day": day, "sunset": sunset}


def _visit_sun(rng: np.random.Generator, visits: list[tuple[float, float]],
               elevation_range: tuple[float, float]) -> tuple[float, float]:
    """One photo's sun: a visit's position, moved by the minutes between this photo and the visit's others."""
    elevation, azimuth = visits[int(rng.integers(len(visits)))]
    d_az, d_el = (float(rng.uniform(-j, j)) for j in VISIT_JITTER_DEG)
    return float(np.clip(elevation + d_el, *elevation_range)), (azimuth + d_az) % 360.0


def sample_appearance(seed: int, index: int, kind: str) -> PhotoConditions:
    """One photo's light. A day's sun is 3.5-5 W/m^2 against a sky fill of 0.02-0.04 (a quarter of the first
    generator's), as a clear day's direct sun outshines its skylight: with a weaker sun, a sunny photo of a shaded
    facade was the same flat picture as an overcast one, to a viewer and to the latents (docs/synthetic.md)."""
    rng = photo_rng(seed, index, 1)
    u = rng.uniform
    exposure = float(np.clip(rng.normal(0.0, 0.3), -EXPOSURE_RANGE_EV, EXPOSURE_RANGE_EV))
    wb_temperature = float(u(5000.0, 7800.0))
    wb_tint = float(u(-12.0, 12.0))
    front_lit = rng.uniform() < 0.75
    azimuth = u(200.0, 340.0) if front_lit else u(0.0, 360.0)
    fog = rng.uniform() < 0.15
    common = dict(air_density=float(u(0.8, 1.6)), aerosol_density=float(u(0.5, 2.5)),
                  exposure_ev=exposure, white_balance_temperature=wb_temperature, white_balance_tint=wb_tint,
                  lamp_color=[1.0, float(u(0.62, 0.78)), float(u(0.35, 0.5))])
    if kind == "day":
        warm = u(0.0, 0.08)
        elevation, azimuth = _visit_sun(rng, sun_visits(seed)["day"], (20.0, 60.0))
        a = dict(sun_elevation_deg=elevation, sun_azimuth_deg=azimuth, sun_strength=u(3.5, 5.0),
                 sun_color=[1.0, 1.0 - warm, 1.0 - 2 * warm], sun_angle_deg=0.6, sky_strength=u(0.02, 0.04),
                 cloud_cover=u(0.0, 0.35), cloud_color=[0.8, 0.82, 0.85], night_lights=0.0,
                 fog_color=[0.78, 0.8, 0.83])
        common["aerosol_density"] = float(u(0.3, 1.2))  # a clear day: the sky stays blue
    elif kind == "sunset":
        elevation, azimuth = _visit_sun(rng, sun_visits(seed)["sunset"], (2.0, 9.0))
        a = dict(sun_elevation_deg=elevation, sun_azimuth_deg=azimuth, sun_strength=u(2.0, 3.0),
                 sun_color=[1.0, u(0.5, 0.68), u(0.25, 0.4)], sun_angle_deg=1.0, sky_strength=u(0.15, 0.3),
                 cloud_cover=u(0.0, 0.3), cloud_color=[0.9, 0.65, 0.5], night_lights=float(u(0.0, 0.3)),
                 fog_color=[0.85, 0.7, 0.6])
        common["aerosol_density"] = float(u(1.5, 4.0))
    elif kind == "overcast":
        gray = u(0.35, 0.6)
        a = dict(sun_elevation_deg=u(30.0, 70.0), sun_azimuth_deg=azimuth, sun_strength=u(0.2, 0.7),
                 sun_color=[1.0, 1.0, 1.0], sun_angle_deg=25.0, sky_strength=0.3, cloud_cover=u(0.8, 0.97),
                 cloud_color=[gray, gray * 1.01, gray * 1.04], night_lights=0.0, fog_color=[gray, gray, gray * 1.02])
    elif kind == "night":
        a = dict(sun_elevation_deg=-12.0, sun_azimuth_deg=azimuth, sun_strength=0.0, sun_color=[1.0, 1.0, 1.0],
                 sun_angle_deg=0.6, sky_strength=0.0, cloud_cover=1.0,
                 cloud_color=[0.004, 0.006, 0.014], night_lights=float(u(0.8, 1.25)), fog_color=[0.03, 0.03, 0.04])
        common["white_balance_temperature"] = float(u(4800.0, 6500.0))
    else:
        raise ValueError(f"unknown appearance kind {kind!r}")
    a["fog_density"] = float(u(0.008, 0.03)) if fog else 0.0
    return PhotoConditions(kind=kind, **{k: (float(v) if isinstance(v, (float, np.floating)) else v)
                                    for k, v in {**a, **common}.items()})


def sample_transients(seed: int, index: int, camera: PhotoCamera, landmark: dict[str, float] | None = None,
                      *, max_people: int = 12, max_cars: int = 3) -> list[Transient]:
    """People on the squares and cars on the road, never within 4 m of the photographer nor inside each other."""
    rng = photo_rng(seed, index, 2)
    cam_xy = camera.center[:2]
    out: list[Transient] = []
    regions = person_regions(landmark)
    blocked = obstacles(landmark)
    areas = np.array([(r.x1 - r.x0) * (r.y1 - r.y0) for r in regions])
    n_people = int(rng.integers(2, max_people + 1))
    while sum(t.kind == "person" for t in out) < n_people:
        r = regions[rng.choice(len(regions), p=areas / areas.sum())]
        xy = np.array([rng.uniform(r.x0, r.x1), rng.uniform(r.y0, r.y1)])
        if np.linalg.norm(xy - cam_xy) < 4.0 or any(np.hypot(xy[0] - x, xy[1] - y) < min(r, 1.0)
                                                    for x, y, r in blocked) \
                or any(np.hypot(xy[0] - t.x, xy[1] - t.y) < 0.7 for t in out):  # nobody stands inside another
            continue
        clothes = rng.uniform(0.05, 0.9, size=3) * rng.choice([0.3, 1.0])
        out.append(Transient("person", float(xy[0]), float(xy[1]), float(rng.uniform(0, 360)),
                             float(rng.uniform(0.9, 1.1)), clothes.tolist()))
    lanes = car_lanes(landmark)
    for _ in range(int(rng.integers(0, max_cars + 1))):
        y, heading = lanes[int(rng.integers(len(lanes)))]
        x = float(rng.uniform(-40.0, 40.0))
        if np.linalg.norm(np.array([x, y]) - cam_xy) < 5.0 or \
                any(t.kind == "car" and t.y == y and abs(t.x - x) < 6.0 for t in out):  # no overlapping cars
            continue
        paint = rng.choice([[0.7, 0.05, 0.05], [0.05, 0.1, 0.5], [0.8, 0.8, 0.78], [0.05, 0.05, 0.05],
                            [0.5, 0.5, 0.52], [0.1, 0.35, 0.15]])
        out.append(Transient("car", x, y, heading, 1.0, [float(c) for c in paint]))
    return out

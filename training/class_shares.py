"""Class shares of a dataset's photo pixels and 3D points, the "landmark labelled transient" warning, and --remap.

Why: a segmenter trained on other pictures can call the landmark itself a transient class (a street-scene model
labelled a statue "car": half of its points). Nothing downstream can notice — transient points are hidden, the
network learns to ignore them — so the dataset report must: real transients (people, cars) move between photos and
are rarely triangulated, so a transient class holding a large share of the *points* means a mislabelled landmark.
The fix is a relabelling by name (``--remap car=building``), applied to the stored segmentations.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from rerender.bridge.classes import UNKNOWN, ClassTable

#: a transient class holding at least this share of the labelled 3D points triggers the warning
TRANSIENT_POINT_SHARE = 0.2
#: classes under this share are left out of the one-line summary
SHOWN_SHARE = 0.01


class RemapError(ValueError):
    """A --remap entry that names no class of the table."""


def parse_remap(items: Iterable[str]) -> dict[str, str]:
    """``["car=building", "truck=building"]`` → ``{"car": "building", "truck": "building"}``."""
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise RemapError(f"--remap {item!r}: use CLASS=CLASS, e.g. --remap car=building")
        out[src.strip()] = dst.strip()
    return out


def remap_lut(remap: dict[str, str], classes: ClassTable) -> np.ndarray:
    """A 256-entry uint8 lookup table that relabels class ``src`` as ``dst`` for every pair (names of ``classes``)."""
    lut = np.arange(256, dtype=np.uint8)
    names = ", ".join(c.name for c in classes)
    for src, dst in remap.items():
        for name in (src, dst):
            try:
                classes.id_of(name)
            except KeyError:
                raise RemapError(f"--remap {src}={dst}: {name!r} is not a class of this dataset's table "
                                 f"({names})") from None
        lut[classes.id_of(src)] = classes.id_of(dst)
    return lut


def class_counts(label_arrays: Iterable[np.ndarray | None]) -> np.ndarray:
    """How often each id 0..255 occurs over all arrays (None entries skipped)."""
    counts = np.zeros(256, np.int64)
    for labels in label_arrays:
        if labels is not None:
            counts += np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=256)
    return counts


def shares(counts: np.ndarray, classes: ClassTable) -> dict[str, float]:
    """class name → share of the labelled (not UNKNOWN) entries, largest first; empty when nothing is labelled."""
    known = counts.copy()
    known[UNKNOWN] = 0
    total = int(known[: len(classes)].sum())
    if total == 0:
        return {}
    pairs = [(c.name, float(known[c.id] / total)) for c in classes if known[c.id]]
    return dict(sorted(pairs, key=lambda p: -p[1]))


def shares_text(pixel: dict[str, float], points: dict[str, float]) -> str:
    """'building 41% / 62%, sky 30% / 0%, ...' for the classes with at least ``SHOWN_SHARE`` of either."""
    names = [n for n in dict.fromkeys([*pixel, *points])
             if max(pixel.get(n, 0.0), points.get(n, 0.0)) >= SHOWN_SHARE]
    return ", ".join(f"{n} {pixel.get(n, 0.0):.0%} / {points.get(n, 0.0):.0%}" for n in names) or "none labelled"


def landmark_class(classes: ClassTable) -> str:
    """The static class a mislabelled landmark most likely is (what the warning suggests remapping to)."""
    names = [c.name for c in classes]
    return "building" if "building" in names else next(c.name for c in classes if not c.transient)


def transient_warnings(point_shares: dict[str, float], classes: ClassTable,
                       threshold: float = TRANSIENT_POINT_SHARE) -> list[str]:
    """One warning per transient class that holds at least ``threshold`` of the labelled 3D points."""
    transient = {c.name for c in classes if c.transient}
    target = landmark_class(classes)
    return [f"{share:.0%} of the triangulated points are labelled {name!r}, a transient class (hidden with "
            f"transient points, ignored by training): the landmark is probably labelled {name}; rerun with "
            f"--remap {name}={target} (or the static class it really is)"
            for name, share in point_shares.items() if name in transient and share >= threshold]

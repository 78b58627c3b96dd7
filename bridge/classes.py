"""The semantic class table shared by the add-on, the backend and training (docs/design.md §4).

Two tables: ``LANDMARK_CLASSES`` (what the ADE20K segmenter, the default for photo collections, maps its 150 classes
onto) and ``DEFAULT_CLASSES``, Cityscapes' 19 train ids (the ESPNet fallback, and what code without a dataset assumes);
255 means "unknown" (no point, or a label nobody knows). The table a dataset was labelled with travels inside its
manifest and every model bundle, so nothing downstream assumes either one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

UNKNOWN = 255


@dataclass(frozen=True)
class SemanticClass:
    id: int
    name: str
    color: tuple[int, int, int]  # sRGB 0-255, Cityscapes' palette
    transient: bool  # people and vehicles: not part of the landmark, the network learns to draw them on demand


CITYSCAPES: tuple[SemanticClass, ...] = (
    SemanticClass(0, "road", (128, 64, 128), False),
    SemanticClass(1, "sidewalk", (244, 35, 232), False),
    SemanticClass(2, "building", (70, 70, 70), False),
    SemanticClass(3, "wall", (102, 102, 156), False),
    SemanticClass(4, "fence", (190, 153, 153), False),
    SemanticClass(5, "pole", (153, 153, 153), False),
    SemanticClass(6, "traffic light", (250, 170, 30), False),
    SemanticClass(7, "traffic sign", (220, 220, 0), False),
    SemanticClass(8, "vegetation", (107, 142, 35), False),
    SemanticClass(9, "terrain", (152, 251, 152), False),
    SemanticClass(10, "sky", (70, 130, 180), False),
    SemanticClass(11, "person", (220, 20, 60), True),
    SemanticClass(12, "rider", (255, 0, 0), True),
    SemanticClass(13, "car", (0, 0, 142), True),
    SemanticClass(14, "truck", (0, 0, 70), True),
    SemanticClass(15, "bus", (0, 60, 100), True),
    SemanticClass(16, "train", (0, 80, 100), True),
    SemanticClass(17, "motorcycle", (0, 0, 230), True),
    SemanticClass(18, "bicycle", (119, 11, 32), True),
)


# The landmark table: what tourist photos of a landmark contain, coarse enough that a scene-parsing model's classes
# (ADE20K's 150) fold onto it without losing what the rerenderer needs. The landmark itself (building, tower, statue,
# monument, fountain, bridge) is static; people, vehicles and animals are transient. docs/dataset.md lists which
# ADE20K classes land in each row.
LANDMARK: tuple[SemanticClass, ...] = (
    SemanticClass(0, "building", (180, 120, 120), False),
    SemanticClass(1, "tower", (255, 150, 60), False),
    SemanticClass(2, "statue", (255, 215, 0), False),
    SemanticClass(3, "monument", (200, 140, 255), False),
    SemanticClass(4, "fountain", (0, 200, 255), False),
    SemanticClass(5, "fence", (255, 184, 6), False),
    SemanticClass(6, "stairs", (150, 110, 60), False),
    SemanticClass(7, "bridge", (120, 80, 160), False),
    SemanticClass(8, "road", (128, 64, 128), False),
    SemanticClass(9, "pavement", (244, 35, 232), False),
    SemanticClass(10, "terrain", (152, 251, 152), False),
    SemanticClass(11, "vegetation", (107, 142, 35), False),
    SemanticClass(12, "mountain", (143, 255, 140), False),
    SemanticClass(13, "water", (61, 230, 250), False),
    SemanticClass(14, "sky", (70, 130, 180), False),
    SemanticClass(15, "pole", (153, 153, 153), False),
    SemanticClass(16, "sign", (220, 220, 0), False),
    SemanticClass(17, "street furniture", (255, 120, 180), False),
    SemanticClass(18, "object", (90, 90, 90), False),
    SemanticClass(19, "person", (220, 20, 60), True),
    SemanticClass(20, "vehicle", (0, 0, 142), True),
    SemanticClass(21, "animal", (255, 0, 255), True),
)


class ClassTable:
    """An ordered class table with lookups by id and name, serialisable to JSON."""

    def __init__(self, classes: tuple[SemanticClass, ...] | list[SemanticClass] = CITYSCAPES):
        ids = [c.id for c in classes]
        if sorted(ids) != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..N-1 without gaps, got {ids}")
        if len(ids) > UNKNOWN:
            raise ValueError(f"at most {UNKNOWN} classes fit a uint8 label with {UNKNOWN} = unknown")
        self.classes = tuple(sorted(classes, key=lambda c: c.id))
        self._by_name = {c.name: c for c in self.classes}

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self):
        return iter(self.classes)

    def __getitem__(self, class_id: int) -> SemanticClass:
        return self.classes[class_id]

    def id_of(self, name: str) -> int:
        try:
            return self._by_name[name].id
        except KeyError:
            raise KeyError(f"unknown semantic class {name!r}; known: {', '.join(self._by_name)}") from None

    @property
    def transient_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes if c.transient)

    def palette(self) -> list[tuple[int, int, int]]:
        """256 sRGB colors indexed by label id; unknown and unused ids are black."""
        pal = [(0, 0, 0)] * 256
        for c in self.classes:
            pal[c.id] = c.color
        return pal

    def to_json(self) -> list[dict]:
        return [dict(asdict(c), color=list(c.color)) for c in self.classes]

    @classmethod
    def from_json(cls, items: list[dict]) -> "ClassTable":
        return cls([SemanticClass(int(i["id"]), str(i["name"]), tuple(int(v) for v in i["color"]), bool(i["transient"]))
                    for i in items])


DEFAULT_CLASSES = ClassTable(CITYSCAPES)
LANDMARK_CLASSES = ClassTable(LANDMARK)

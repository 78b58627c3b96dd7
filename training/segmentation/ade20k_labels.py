"""ADE20K's 150 scene-parsing classes (SceneParse150 order = the model's output channels) and their landmark class.

Why a fold onto a small table: the rerenderer needs to know what is the landmark (static, to be reproduced), what is
sky and ground, and what is transient (people, vehicles, animals: to be ignored or drawn on demand); 150 input
channels of indoor furniture would only cost memory. The fold is a table a reader can check line by line; classes
nobody expects outdoors go to "object" (static). docs/dataset.md reproduces it.
"""

from __future__ import annotations

ADE20K_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

#: landmark class → the ADE20K classes folded into it; every ADE20K class not listed becomes "object"
LANDMARK_FOLD: dict[str, tuple[str, ...]] = {
    "building": ("wall", "building", "house", "skyscraper", "hovel", "windowpane", "door", "screen door", "ceiling",
                 "awning", "grandstand", "stage", "booth"),
    "tower": ("tower",),
    "statue": ("sculpture",),
    "monument": ("column", "base"),
    "fountain": ("fountain",),
    "fence": ("fence", "railing", "bannister"),
    "stairs": ("stairs", "stairway", "step", "escalator"),
    "bridge": ("bridge", "pier"),
    "road": ("road", "runway", "dirt track"),
    "pavement": ("sidewalk", "path", "floor", "rug"),
    "terrain": ("earth", "grass", "field", "sand", "land"),
    "vegetation": ("tree", "plant", "palm", "flower"),
    "mountain": ("mountain", "hill", "rock"),
    "water": ("water", "sea", "river", "lake", "waterfall", "swimming pool"),
    "sky": ("sky",),
    "pole": ("pole", "streetlight", "traffic light", "flag"),
    "sign": ("signboard", "trade name", "poster", "bulletin board", "clock", "screen", "crt screen", "monitor"),
    "street furniture": ("bench", "ashcan", "canopy", "tent", "light", "lamp", "sconce", "barrel", "pot", "vase",
                         "chandelier", "box", "tank", "basket"),
    "person": ("person", "apparel", "bag"),
    "vehicle": ("car", "bus", "truck", "van", "minibike", "bicycle", "boat", "ship", "airplane"),
    "animal": ("animal",),
}


def landmark_mapping(table) -> list[int]:
    """``mapping[i]`` = id in ``table`` (a ClassTable with the landmark names) of ADE20K class ``i``."""
    by_ade = {}
    for target, sources in LANDMARK_FOLD.items():
        for name in sources:
            if name in by_ade:
                raise ValueError(f"ADE20K class {name!r} is folded twice")
            if name not in ADE20K_NAMES:
                raise ValueError(f"{name!r} is not an ADE20K class")
            by_ade[name] = table.id_of(target)
    other = table.id_of("object")
    return [by_ade.get(name, other) for name in ADE20K_NAMES]

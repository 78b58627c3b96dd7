"""Scene-level settings of a Rerender shot, above all the appearance latent (DESIGN §6).

Why a collection for the latent: a ``FloatVectorProperty``'s size is fixed when the class is registered (and is
at most 32), but the latent size belongs to the model bundle (8 by default, as in the paper, but a bundle may be
trained with another). So the latent is ``scene.rerender.appearance``, a collection of one-float items, one per
latent component. Each item's ``value`` is animatable like any property (data path
``rerender.appearance[3].value`` on the Scene), F-curves interpolate between keyed looks, and the collection is
resized to the bundle's size when a backend is reached (``match_latent_size``). No torch here: the add-on only
stores numbers; the backend gives them meaning.
"""

from __future__ import annotations

import bpy
import numpy as np

DEFAULT_LATENT_SIZE = 8  # the paper's appearance latent size; a bundle states its own


class RerenderLatentComponent(bpy.types.PropertyGroup):
    """One component of the appearance latent; a separate item so that any latent size can be animated."""

    value: bpy.props.FloatProperty(
        name="Value", description="One component of the appearance latent (animatable)",
        default=0.0, soft_min=-3.0, soft_max=3.0, precision=3, options={"ANIMATABLE"},
    )


class RerenderSceneSettings(bpy.types.PropertyGroup):
    """``scene.rerender``: what the Neural Rerender engine needs besides the camera and the point cloud."""

    appearance: bpy.props.CollectionProperty(
        type=RerenderLatentComponent, name="Appearance",
        description="The appearance latent of the current frame; key it to animate the look",
    )
    point_size_auto: bpy.props.BoolProperty(
        name="Automatic Point Size", default=True,
        description="Choose the splat size per frame from the point density the camera sees (about 1 px for dense "
        "clouds, as in the paper; larger for sparse ones)",
    )
    point_size: bpy.props.FloatProperty(
        name="Point Size", description="Splat radius of each point in pixels when not automatic (about 1 for "
        "dense clouds; larger fills the gaps of sparse clouds)", default=1.5, min=0.25, soft_max=8.0, max=64.0,
        precision=2, subtype="PIXEL",
    )
    appearance_name: bpy.props.StringProperty(
        name="Look", description="Name of the gallery appearance last applied (informative only)", default="",
    )


def splat_px(scene: bpy.types.Scene) -> float | None:
    """The splat radius to rasterize with: None means "estimate it" (``render_deep_buffer``'s default)."""
    settings = scene.rerender
    return None if settings.point_size_auto else float(settings.point_size)


def latent_size(scene: bpy.types.Scene) -> int:
    """Number of latent components the scene currently stores."""
    return len(scene.rerender.appearance)


def match_latent_size(scene: bpy.types.Scene, size: int) -> bool:
    """Grow (with zeros) or shrink the scene's latent to ``size`` components; True when it changed.

    Call it from the main thread only (never from a render or a status thread): it edits scene data.
    """
    if not 1 <= size <= 4096:
        raise ValueError(f"latent size must be between 1 and 4096, got {size}")
    items = scene.rerender.appearance
    changed = len(items) != size
    while len(items) < size:
        items.add().value = 0.0
    while len(items) > size:
        items.remove(len(items) - 1)
    return changed


def set_latent(scene: bpy.types.Scene, values: np.ndarray | list[float]) -> None:
    """Store a latent vector on the scene (resizing the collection to its length)."""
    vec = np.asarray(values, dtype=np.float32).ravel()
    if not np.all(np.isfinite(vec)):
        raise ValueError("an appearance latent must be finite numbers")
    match_latent_size(scene, vec.size)
    for item, v in zip(scene.rerender.appearance, vec):
        item.value = float(v)


def key_latent(scene: bpy.types.Scene, frame: int | None = None) -> None:
    """Insert a keyframe on every latent component at ``frame`` (current frame by default)."""
    frame = scene.frame_current if frame is None else frame
    for i in range(latent_size(scene)):
        scene.keyframe_insert(f"rerender.appearance[{i}].value", frame=frame, group="Rerender Appearance")


def read_latent(scene: bpy.types.Scene) -> np.ndarray:
    """The latent as float32. Pass the *evaluated* scene (``depsgraph.scene_eval``) to get the animated value."""
    items = scene.rerender.appearance
    out = np.empty(len(items), np.float32)
    items.foreach_get("value", out)
    return out


CLASSES = (RerenderLatentComponent, RerenderSceneSettings)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.rerender = bpy.props.PointerProperty(type=RerenderSceneSettings)


def unregister() -> None:
    del bpy.types.Scene.rerender
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

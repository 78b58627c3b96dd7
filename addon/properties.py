"""Scene-level settings of a Rerender shot, above all the appearance latent (docs/design.md §6).

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

from . import compat

DEFAULT_LATENT_SIZE = 8  # the paper's appearance latent size; a bundle states its own


class RerenderLatentComponent(bpy.types.PropertyGroup):
    """One component of the appearance latent; a separate item so that any latent size can be animated."""

    value: bpy.props.FloatProperty(
        name="Value", description="One component of the appearance latent (animatable)",
        default=0.0, soft_min=-3.0, soft_max=3.0, precision=3, options={"ANIMATABLE"},
    )


LOOK_SOURCES = (
    ("GALLERY", "Gallery", "An appearance of the model bundle's gallery (one per training photo)"),
    ("PHOTO", "Photo", "Encoded by the backend from a photo the artist opened"),
    ("MIX", "Mix", "Mixed or scaled from other looks"),
)
INTERPOLATIONS = (
    ("LINEAR", "Linear", "Straight blend from one keyed look to the next"),
    ("BEZIER", "Bézier", "Ease in and out between keyed looks"),
    ("CONSTANT", "Constant", "Hold each look until the next key (a cut)"),
)


class RerenderLook(bpy.types.PropertyGroup):
    """``scene.rerender.looks[i]``: a named appearance latent stored in the .blend (so looks travel with the file).

    ``name`` (built in) is the look's name; ``latent`` one float per component, like ``scene.rerender.appearance``;
    ``thumbnail`` the name of a packed image in ``bpy.data.images`` (empty when there is none).
    """

    latent: bpy.props.CollectionProperty(type=RerenderLatentComponent, name="Latent")
    source: bpy.props.EnumProperty(name="Source", items=LOOK_SOURCES, default="GALLERY")
    thumbnail: bpy.props.StringProperty(name="Thumbnail", description="Image (packed in the .blend) shown for "
                                        "this look", default="")
    photo_path: bpy.props.StringProperty(name="Photo", description="The photo a PHOTO look was encoded from",
                                         default="", subtype="FILE_PATH")


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
    looks: bpy.props.CollectionProperty(
        type=RerenderLook, name="Looks",
        description="Named appearances (gallery, encoded photos, mixes), saved in the .blend",
    )
    looks_index: bpy.props.IntProperty(name="Active Look", default=0, min=0)
    look_interpolation: bpy.props.EnumProperty(
        name="Interpolation", items=INTERPOLATIONS, default="LINEAR",
        description="How the keys that 'Apply at Frame' inserts blend into the next keyed look",
    )
    mix_a: bpy.props.StringProperty(name="Look A", description="First look of the mix", default="")
    mix_b: bpy.props.StringProperty(name="Look B", description="Second look of the mix", default="")
    mix_factor: bpy.props.FloatProperty(name="Mix", description="0 = look A, 1 = look B", default=0.5,
                                        min=0.0, max=1.0, subtype="FACTOR")
    mix_scale: bpy.props.FloatProperty(name="Scale", description="Multiply the mixed latent (nudges the look "
                                       "towards the model's average look below 1, exaggerates it above 1)",
                                       default=1.0, soft_min=0.0, soft_max=2.0)
    hide_transient: bpy.props.BoolProperty(
        name="Hide Transient Points", default=False,
        description="Leave the point cloud's people and vehicles (transient classes) out of the deep buffer; "
        "objects you tag with a class yourself stay",
    )
    fill_labels: bpy.props.BoolProperty(
        name="Fill Labels with S", default=False,
        description="Let the backend's semantic network predict the labels of pixels no point covers (sky, "
        "ground) before rerendering; the Label pass then shows what the network received",
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


def latent_fcurves(scene: bpy.types.Scene) -> dict[int, bpy.types.FCurve]:
    """Component index -> F-curve of ``rerender.appearance[i].value`` (the one walker over the scene's action)."""
    curves = compat.action_fcurves(scene.animation_data)
    prefix, suffix = "rerender.appearance[", "].value"
    return {int(fc.data_path[len(prefix):-len(suffix)]): fc for fc in curves
            if fc.data_path.startswith(prefix) and fc.data_path.endswith(suffix)}


CLASSES = (RerenderLatentComponent, RerenderLook, RerenderSceneSettings)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.rerender = bpy.props.PointerProperty(type=RerenderSceneSettings)


def unregister() -> None:
    del bpy.types.Scene.rerender
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

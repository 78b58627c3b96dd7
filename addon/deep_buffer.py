"""THE rasterizer: the deep buffer (docs/design.md §3) of any camera at any frame, rendered by EEVEE.

One function, :func:`render_deep_buffer`, serves the render engine at shot time (called from inside
``RenderEngine.render``) and the dataset builder at training time (called from plain bpy scripts), so the network
never sees buffers from two different renderers (docs/design.md §1).

How: a hidden helper scene (``.rerender deep buffer``) links the shot scene's point clouds, every object that
carries a semantic class, and the camera. Its view layer overrides every material with an unlit one (albedo as
emission, label as a shader AOV), EEVEE runs with 1 sample, no pixel filter and color management off, so values come
back exact. The compositor writes one single-layer EXR per pass (color+alpha, depth, label) into a RAM folder
through File Output nodes — the multilayer EXR writer refuses non-square pixels (docs/addon-rasterizer.md) — and
exr_io reads them back. What differs between Blender releases (engine id, compositor API, file output) is in
compat.py.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import compat
from . import points as pts
from ._bridge import UNKNOWN, DeepBuffer
from .cameras import camera_pixel_aspect, colmap_from_camera
from .exr_io import ram_folder, read_exr

HELPER_SCENE = ".rerender deep buffer"
COMPOSITOR_GROUP = ".rerender deep buffer passes"
OUTPUT_NODE = "Deep Buffer Files"
PASSES = ("color", "depth", "label")  # file output item names

MIN_SPLAT_PX, MAX_SPLAT_PX = 1.0, 6.0
TRANSIENT_MODIFIER = "Rerender Hide Transient"
TRANSIENT_GROUP = ".rerender hide transient"
MATERIAL_MODIFIER = "Rerender Deep Buffer Material"
MATERIAL_GROUP = ".rerender deep buffer material"

_folder: Path | None = None
_counter = itertools.count()


class DeepBufferError(RuntimeError):
    """The deep buffer cannot be rendered (bad camera, nothing written, ...); the message says what to do."""


def _ram_folder() -> Path:
    """This process's RAM folder for pass files (removed at exit; each render deletes its own files at once)."""
    global _folder
    if _folder is None or not _folder.is_dir():
        _folder = ram_folder("rerender-deep-buffer-")
        atexit.register(shutil.rmtree, _folder, True)
    return _folder


def _set_if_has(obj, attr: str, value) -> None:
    """Set a setting that exists in this Blender version (EEVEE's options move between releases)."""
    if hasattr(obj, attr):
        setattr(obj, attr, value)


def _configure_render(scene) -> None:
    """EEVEE fast exact settings: 1 sample, no filter, no shadows/raytracing/GI, transparent film, no view transform."""
    r = scene.render
    r.engine = compat.eevee_engine_id()
    r.filter_size = 0.0
    r.film_transparent = True
    r.use_compositing = True
    r.use_sequencer = False
    r.resolution_percentage = 100
    r.use_border = False
    r.use_persistent_data = False
    ee = scene.eevee
    ee.taa_render_samples = 1
    for attr in ("use_shadows", "use_raytracing", "use_fast_gi", "use_gtao", "use_bloom", "use_ssr",
                 "use_motion_blur", "use_volumetric_shadows"):
        _set_if_has(ee, attr, False)
    r.use_motion_blur = False
    scene.display_settings.display_device = "sRGB"
    vs = scene.view_settings
    vs.view_transform = "Standard"
    vs.look = "None"
    vs.exposure = 0.0
    vs.gamma = 1.0
    vs.use_curve_mapping = False
    scene.world = None


def _configure_view_layer(scene) -> None:
    layer = scene.view_layers[0]
    layer.use_pass_z = True
    layer.use_pass_combined = True
    if pts.LABEL_AOV not in layer.aovs:
        aov = layer.aovs.add()
        aov.name = pts.LABEL_AOV
        aov.type = "VALUE"
    # Where EEVEE drops the override's shader AOVs (4.x), the objects get the material from a modifier instead.
    keeps_aovs = compat.material_override_keeps_aovs()
    layer.material_override = pts.ensure_deep_buffer_material() if keeps_aovs else None
    for attr in ("use_freestyle",):
        _set_if_has(layer, attr, False)


def _configure_compositor(scene) -> None:
    """Render Layers -> one File Output node writing color (RGBA), depth and label as single-layer float EXRs."""
    tree = compat.compositor_tree(scene)
    if tree is not None and tree.nodes.get(OUTPUT_NODE) is not None:
        return
    tree = compat.new_compositor_tree(scene, COMPOSITOR_GROUP)
    rl = tree.nodes.new("CompositorNodeRLayers")
    rl.scene = scene
    out = compat.file_output_node(tree, OUTPUT_NODE, (("color", "RGBA"), ("depth", "FLOAT"), ("label", "FLOAT")))
    out.location = (400, 0)
    links = tree.links
    links.new(rl.outputs["Image"], out.inputs["color"])
    links.new(rl.outputs["Depth"], out.inputs["depth"])
    aov_socket = rl.outputs.get(pts.LABEL_AOV)
    if aov_socket is None:
        raise DeepBufferError(f"the helper scene's Render Layers node has no {pts.LABEL_AOV!r} AOV output; "
                              f"delete the scene {HELPER_SCENE!r} to have it rebuilt")
    links.new(aov_socket, out.inputs["label"])


def ensure_helper_scene():
    """Create (or re-check) the hidden helper scene; idempotent and cheap to call before every render."""
    import bpy

    scene = bpy.data.scenes.get(HELPER_SCENE)
    if scene is None:
        scene = bpy.data.scenes.new(HELPER_SCENE)
    _configure_render(scene)
    _configure_view_layer(scene)
    _configure_compositor(scene)
    return scene


def _sync_objects(helper, shot_scene, camera) -> list:
    """Link exactly the shot scene's drawable objects (point clouds, classed objects) and the camera."""
    wanted = [o for o in shot_scene.objects if not o.hide_render and pts.has_semantic_class(o)]
    keep = set(wanted) | {camera}
    coll = helper.collection
    for obj in list(coll.objects):
        if obj not in keep:
            coll.objects.unlink(obj)
    for child in list(coll.children):
        coll.children.unlink(child)
    for obj in keep:
        if coll.objects.get(obj.name) is not obj:
            coll.objects.link(obj)
    helper.camera = camera
    return wanted


def _transient_filter_group(ids: tuple[int, ...]):
    """Geometry Nodes group deleting the points whose label attribute is one of ``ids`` (made once per id set)."""
    import bpy

    name = f"{TRANSIENT_GROUP} {','.join(str(i) for i in ids)}"
    group = bpy.data.node_groups.get(name)
    if group is not None and group.bl_idname == "GeometryNodeTree":
        return group
    group = bpy.data.node_groups.new(name, "GeometryNodeTree")
    group.is_modifier = True
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = group.nodes, group.links
    g_in, g_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    label = nodes.new("GeometryNodeInputNamedAttribute")
    label.data_type = "INT"
    label.inputs["Name"].default_value = pts.LABEL_ATTR
    selection = None
    for class_id in ids:
        equal = nodes.new("FunctionNodeCompare")
        equal.data_type, equal.operation = "INT", "EQUAL"
        a, b = [s for s in equal.inputs if s.type == "INT"][:2]
        links.new(label.outputs["Attribute"], a)
        b.default_value = int(class_id)
        if selection is None:
            selection = equal.outputs["Result"]
        else:
            either = nodes.new("FunctionNodeBooleanMath")
            either.operation = "OR"
            links.new(selection, either.inputs[0])
            links.new(equal.outputs["Result"], either.inputs[1])
            selection = either.outputs["Boolean"]
    delete = nodes.new("GeometryNodeDeleteGeometry")
    delete.domain = "POINT"
    links.new(g_in.outputs["Geometry"], delete.inputs["Geometry"])
    if selection is not None:
        links.new(selection, delete.inputs["Selection"])
    links.new(delete.outputs["Geometry"], g_out.inputs["Geometry"])
    return group


def _hide_transient_points(clouds, hide: bool) -> None:
    """Switch the transient-point filter of every point cloud on or off (added after the points modifier).

    Why a modifier and not a post-step on the pixels: a removed person must uncover what stands behind it (in
    color, depth and label), which only leaving the points out of the render does. Objects the artist tagged with
    a class are not point clouds and stay."""
    ids = tuple(_bridge_classes().transient_ids)
    for obj in clouds:
        if not pts.is_point_cloud(obj):
            continue
        mod = obj.modifiers.get(TRANSIENT_MODIFIER)
        if mod is None:
            if not hide:
                continue
            mod = obj.modifiers.new(TRANSIENT_MODIFIER, "NODES")
        if hide and mod.node_group is None:
            mod.node_group = _transient_filter_group(ids)
        if mod.show_render != hide or mod.show_viewport != hide:
            mod.show_render = mod.show_viewport = hide


@contextmanager
def _deep_buffer_material_by_modifier(objects):
    """On Blenders whose EEVEE ignores a view-layer material override's AOVs (4.x), give each drawn object the
    deep-buffer material through a last Geometry Nodes modifier that is switched on for the nested render only."""
    if compat.material_override_keeps_aovs():
        yield
        return
    import bpy

    group = bpy.data.node_groups.get(MATERIAL_GROUP)
    if group is None or group.bl_idname != "GeometryNodeTree":
        group = bpy.data.node_groups.new(MATERIAL_GROUP, "GeometryNodeTree")
        group.is_modifier = True
        group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
        group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
        g_in, g_out = group.nodes.new("NodeGroupInput"), group.nodes.new("NodeGroupOutput")
        set_mat = group.nodes.new("GeometryNodeSetMaterial")
        set_mat.inputs["Material"].default_value = pts.ensure_deep_buffer_material()
        group.links.new(g_in.outputs["Geometry"], set_mat.inputs["Geometry"])
        group.links.new(set_mat.outputs["Geometry"], g_out.inputs["Geometry"])
    switched = []
    for obj in objects:
        mod = obj.modifiers.get(MATERIAL_MODIFIER)
        if mod is None:
            mod = obj.modifiers.new(MATERIAL_MODIFIER, "NODES")
            mod.node_group = group
            mod.show_viewport = False
        last = len(obj.modifiers) - 1
        index = list(obj.modifiers).index(mod)
        if index != last:  # after every other modifier (the transient filter comes and goes)
            obj.modifiers.move(index, last)
        mod.show_render = True
        switched.append(mod)
    try:
        yield
    finally:
        for mod in switched:
            mod.show_render = False


def _bridge_classes():
    from ._bridge import bridge

    return bridge.classes.DEFAULT_CLASSES


def estimate_splat_px(xyz_world: np.ndarray, cam, total_points: int | None = None) -> float:
    """Splat radius in pixels that makes a cloud look closed from this camera without blurring dense ones.

    Projects (a sample of) the points, measures the point density in 8x8-pixel blocks that contain points, and takes
    the radius at which diamonds of area 2r^2 tile the median block. Dense clouds (several points per pixel) get
    ~1 px as in the paper; sparse SfM clouds get bigger splats, at most MAX_SPLAT_PX.
    """
    xyz_world = np.asarray(xyz_world, np.float64)
    if len(xyz_world) == 0:
        return MIN_SPLAT_PX
    weight = (total_points or len(xyz_world)) / len(xyz_world)
    p_cam = xyz_world @ cam.R.T + cam.t
    front = p_cam[:, 2] > 1e-6
    p_cam = p_cam[front]
    u = cam.fx * p_cam[:, 0] / p_cam[:, 2] + cam.cx
    v = cam.fy * p_cam[:, 1] / p_cam[:, 2] + cam.cy
    inside = (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    if not inside.any():
        return MIN_SPLAT_PX
    block = 8
    bx = (u[inside] // block).astype(np.int64)
    by = (v[inside] // block).astype(np.int64)
    counts = np.bincount(by * (cam.width // block + 1) + bx)
    counts = counts[counts > 0] * weight
    density = float(np.median(counts)) / (block * block)  # points per pixel where there are points
    radius = np.sqrt(1.0 / (2.0 * density)) * 1.25  # diamonds of area 2r^2 tile the image, with a little overlap
    return float(np.clip(radius, MIN_SPLAT_PX, MAX_SPLAT_PX))


def _auto_splat_px(clouds, cam, depsgraph=None) -> float:
    """estimate_splat_px over all point clouds (at most ~60k sampled points in total: a few milliseconds); object
    matrices come from ``depsgraph`` when given (current at the rendered frame)."""
    samples, total = [], 0
    for obj in clouds:
        if not pts.is_point_cloud(obj):
            continue
        n = len(obj.data.vertices)
        if n == 0:
            continue
        step = max(1, n // 60000)
        co = pts.point_positions(obj)[::step].astype(np.float64)
        m = np.array((obj.evaluated_get(depsgraph) if depsgraph is not None else obj).matrix_world)
        samples.append((co @ m[:3, :3].T + m[:3, 3], step))
        total += n
    if not samples:
        return MIN_SPLAT_PX
    xyz = np.concatenate([s for s, _ in samples])
    step = total / len(xyz)
    return estimate_splat_px(xyz, cam, total_points=int(round(len(xyz) * step)))


def _render_size(scene, resolution) -> tuple[int, int]:
    if resolution is not None:
        try:
            w, h = (int(v) for v in resolution)
        except (TypeError, ValueError):
            raise ValueError(f"resolution must be (width, height) in pixels, got {resolution!r}") from None
    else:
        r = scene.render
        w = max(1, r.resolution_x * r.resolution_percentage // 100)
        h = max(1, r.resolution_y * r.resolution_percentage // 100)
    if w < 1 or h < 1 or w > 16384 or h > 16384:
        raise ValueError(f"deep buffer size {w} x {h} is out of range (1..16384 pixels per side)")
    return w, h


def render_deep_buffer(scene, camera, *, frame: int | float | None = None,
                       resolution: tuple[int, int] | None = None, splat_px: float | None = None,
                       hide_transient: bool | None = None) -> DeepBuffer:
    """Render the deep buffer of ``camera`` for the objects of ``scene`` at ``frame``.

    scene      the shot scene (its point clouds, classed objects, animation and, by default, its resolution)
    camera     a camera object (animated or not; it need not be the scene's active camera)
    frame      the frame to evaluate (float for subframes); default the scene's current frame
    resolution (width, height) in pixels; default the scene's render size. The camera's calibrated pixel aspect
               (fx != fy) is used when it has one, else the scene's.
    splat_px   splat radius in pixels; default an estimate from the point density seen by this camera.
    hide_transient  leave the point clouds' transient points (people, vehicles) out; default the scene's
               ``scene.rerender.hide_transient`` toggle (off when the add-on's properties are not registered).

    Returns color (float16 linear, 0 where empty), depth (float32 planar z, +inf where empty), label (uint8, 255
    where empty) and mask, H x W with row 0 at the top. Callable from plain scripts and from inside a Python
    ``RenderEngine.render()`` (the engine must use ``bl_use_gpu_context = False``).
    """
    import bpy

    if camera is None or getattr(camera, "type", None) != "CAMERA":
        what = "None" if camera is None else f"{camera.name!r} ({camera.type})"
        raise DeepBufferError(f"render_deep_buffer needs a camera object, got {what}")
    if camera.data.type != "PERSP":
        raise DeepBufferError(f"camera {camera.name!r} is {camera.data.type}; the deep buffer needs a perspective "
                              "camera (splat sizes follow the distance to the camera)")
    if scene.name == HELPER_SCENE:
        raise DeepBufferError("pass the shot scene, not the deep-buffer helper scene")
    width, height = _render_size(scene, resolution)
    aspect = camera_pixel_aspect(camera, scene)

    helper = ensure_helper_scene()
    clouds = _sync_objects(helper, scene, camera)
    if hide_transient is None:
        hide_transient = bool(getattr(getattr(scene, "rerender", None), "hide_transient", False))
    _hide_transient_points(clouds, bool(hide_transient))
    r = helper.render
    r.resolution_x, r.resolution_y = width, height
    r.pixel_aspect_x, r.pixel_aspect_y = aspect
    if frame is None:
        frame = scene.frame_current + scene.frame_subframe
    whole = int(np.floor(frame))
    sub = float(frame) - whole
    helper.frame_set(whole, subframe=sub)

    cam = colmap_from_camera(camera, width, height, aspect)
    if splat_px is None:
        # Evaluated matrices at this frame: the originals' matrix_world is stale for a scene that is not the
        # context scene (or right after an import), which made sparse clouds get ~1 px splats.
        depsgraph = helper.view_layers[0].depsgraph
        depsgraph.update()
        splat_px = _auto_splat_px(clouds, _world_camera(camera, width, height, aspect, camera.evaluated_get(depsgraph)),
                                  depsgraph)
    if not splat_px > 0:
        raise ValueError(f"splat_px must be positive (a radius in pixels), got {splat_px}")
    scale = float(splat_px) / min(cam.fx, cam.fy)
    for obj in clouds:
        if pts.is_point_cloud(obj):
            pts.set_splat_scale(obj, scale)

    folder = _ram_folder()
    token = f"db{os.getpid()}_{next(_counter)}_"
    compat.set_file_output_target(compat.compositor_tree(helper).nodes[OUTPUT_NODE], folder, token)
    with _frame_everywhere(bpy.context.scene, scene, frame=whole, subframe=sub):
        with _deep_buffer_material_by_modifier(clouds):
            bpy.ops.render.render(scene=helper.name, write_still=False)
    files = sorted(folder.glob(token + "*"))
    try:
        arrays = {}
        for name in PASSES:
            match = [f for f in files if name in f.name[len(token):]]
            if not match:
                raise DeepBufferError(f"EEVEE wrote no {name!r} pass into {folder} (found: "
                                      f"{[f.name for f in files]}); is the compositor disabled in {HELPER_SCENE!r}?")
            arrays[name] = read_exr(match[0])
    finally:
        for f in files:
            f.unlink(missing_ok=True)
    return _to_deep_buffer(arrays["color"], arrays["depth"], arrays["label"], (height, width))


@contextmanager
def _frame_everywhere(*scenes, frame: int, subframe: float):
    """Temporarily put the shot scene and the context scene at the frame too.

    Why: the nested render of the helper scene evaluates animation at the *context* scene's frame, not at the
    helper's (measured with bpy 5.0.1). Plain assignment runs no frame-change handlers; values are restored.
    """
    saved = []
    for s in {id(x): x for x in scenes if x is not None and x.name != HELPER_SCENE}.values():
        if (s.frame_current, s.frame_subframe) != (frame, subframe):
            saved.append((s, s.frame_current, s.frame_subframe))
            s.frame_current, s.frame_subframe = frame, subframe
    try:
        yield
    finally:
        for s, f, sf in saved:
            s.frame_current, s.frame_subframe = f, sf


def _world_camera(camera, width: int, height: int, aspect, evaluated=None):
    """The camera in world coordinates (for projecting world-space points), whatever its parent; ``evaluated`` is
    the depsgraph-evaluated camera whose matrix_world is current at the frame being rendered."""
    from .cameras import _FLIP_YZ, ColmapCamera

    local = colmap_from_camera(camera, width, height, aspect)
    world = np.array((evaluated or camera).matrix_world)
    # Object scale (e.g. inherited from a scaled reconstruction root) does not change the view: normalise it away.
    world[:3, :3] /= np.linalg.norm(world[:3, :3], axis=0, keepdims=True)
    cam_from_world = np.linalg.inv(world @ _FLIP_YZ)
    return ColmapCamera(R=cam_from_world[:3, :3], t=cam_from_world[:3, 3], fx=local.fx, fy=local.fy,
                        cx=local.cx, cy=local.cy, width=width, height=height)


def _to_deep_buffer(rgba: np.ndarray, depth: np.ndarray, label: np.ndarray, hw: tuple[int, int]) -> DeepBuffer:
    """EXR pass arrays -> the docs/design.md §3 contract (mask from alpha; empty pixels get 0 / +inf / 255)."""
    if rgba.shape[:2] != hw:
        raise DeepBufferError(f"EEVEE rendered {rgba.shape[1]} x {rgba.shape[0]} pixels, expected {hw[1]} x {hw[0]}")
    mask = rgba[..., 3] > 0.5
    color = np.where(mask[..., None], rgba[..., :3], 0.0).astype(np.float16)
    z = np.where(mask, depth[..., 0], np.inf).astype(np.float32)
    lab = np.where(mask, np.clip(np.rint(label[..., 0]), 0, UNKNOWN), UNKNOWN).astype(np.uint8)
    return DeepBuffer(color=color, depth=z, label=lab, mask=mask)

"""Point-cloud objects and the node setups that draw them (docs/design.md §6).

A point cloud is a vertex-only mesh (fast to fill with ``foreach_set``) carrying a FLOAT_COLOR attribute with the
scene-linear color and an INT attribute with the semantic label. A vertex-only mesh renders nothing in EEVEE, so a
Geometry Nodes modifier turns the vertices into points whose radius keeps a constant size on screen:

    radius = distance(point, active camera) * splat_scale,      splat_scale = splat_px / focal_px

The camera comes from the "Active Camera" node, i.e. the camera of whichever scene is being evaluated, so one
object linked into the shot scene and into the deep-buffer helper scene is sized for each scene's own camera.
``splat_scale`` is a modifier input that the deep-buffer renderer sets before each render.

Any object can carry a semantic class for the deep buffer: per point/vertex/face through the INT attribute
``rerender_label``, or per object through the custom property ``rerender_class`` (an int); its albedo likewise
through the ``rerender_color`` attribute or an object custom property of 3 floats. The deep-buffer material adds the
geometry value and the object value (an absent one reads as 0), so an object must use one of the two, not both.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import compat

COLOR_ATTR = "rerender_color"
LABEL_ATTR = "rerender_label"
POINT_ID_ATTR = "rerender_point_id"  # COLMAP point3D id of each vertex (sparse imports), for per-point label builders
OBJECT_CLASS_PROP = "rerender_class"
OBJECT_COLOR_PROP = "rerender_color"
LABEL_AOV = "rerender_label"
POINTS_MARK = "rerender_points"  # object custom property: this object is a point cloud of ours

NODE_GROUP_NAME = ".rerender points"
MODIFIER_NAME = "Rerender Points"
DISPLAY_MATERIAL = "Rerender Points"
DEEP_BUFFER_MATERIAL = ".rerender deep buffer"
SCALE_SOCKET = "Splat Scale"
DEFAULT_SPLAT_SCALE = 0.002  # ~2 px at 1000 px focal, for the viewport before the first deep-buffer render

Progress = Callable[[float, str], None]


def ensure_points_node_group():
    """The Geometry Nodes group "Mesh to Points with constant screen size" (created once per file)."""
    import bpy

    group = bpy.data.node_groups.get(NODE_GROUP_NAME)
    if group is not None and group.bl_idname == "GeometryNodeTree":
        return group
    group = bpy.data.node_groups.new(NODE_GROUP_NAME, "GeometryNodeTree")
    group.is_modifier = True
    iface = group.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    scale = iface.new_socket(SCALE_SOCKET, in_out="INPUT", socket_type="NodeSocketFloat")
    scale.default_value = DEFAULT_SPLAT_SCALE
    scale.min_value = 0.0
    scale.description = "splat radius per unit of distance to the camera (pixels / focal length in pixels)"
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    nodes, links = group.nodes, group.links
    g_in = nodes.new("NodeGroupInput")
    g_out = nodes.new("NodeGroupOutput")
    active_cam = nodes.new("GeometryNodeInputActiveCamera")
    cam_info = nodes.new("GeometryNodeObjectInfo")
    cam_info.transform_space = "RELATIVE"  # camera location in this object's space, re-evaluated as it moves
    position = nodes.new("GeometryNodeInputPosition")
    distance = nodes.new("ShaderNodeVectorMath")
    distance.operation = "DISTANCE"
    radius = nodes.new("ShaderNodeMath")
    radius.operation = "MULTIPLY"
    to_points = nodes.new("GeometryNodeMeshToPoints")
    to_points.mode = "VERTICES"
    set_mat = nodes.new("GeometryNodeSetMaterial")
    set_mat.inputs["Material"].default_value = ensure_display_material()

    links.new(active_cam.outputs["Active Camera"], cam_info.inputs["Object"])
    links.new(position.outputs["Position"], distance.inputs[0])
    links.new(cam_info.outputs["Location"], distance.inputs[1])
    links.new(distance.outputs["Value"], radius.inputs[0])
    links.new(g_in.outputs[SCALE_SOCKET], radius.inputs[1])
    links.new(g_in.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(radius.outputs["Value"], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], set_mat.inputs["Geometry"])
    links.new(set_mat.outputs["Geometry"], g_out.inputs["Geometry"])
    for i, node in enumerate((g_in, active_cam, cam_info, position, distance, radius, to_points, set_mat, g_out)):
        node.location = (200 * i, 0)
    return group


def _emission_from_attributes(mat, with_label_aov: bool) -> None:
    """Material body: emission = geometry color attribute + object color property; optional label AOV."""
    tree = compat.material_node_tree(mat)
    nodes, links = tree.nodes, tree.links
    nodes.clear()
    geo_color = nodes.new("ShaderNodeAttribute")
    geo_color.attribute_type = "GEOMETRY"
    geo_color.attribute_name = COLOR_ATTR
    obj_color = nodes.new("ShaderNodeAttribute")
    obj_color.attribute_type = "OBJECT"
    obj_color.attribute_name = OBJECT_COLOR_PROP
    add_color = nodes.new("ShaderNodeVectorMath")
    add_color.operation = "ADD"
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 1.0
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(geo_color.outputs["Vector"], add_color.inputs[0])
    links.new(obj_color.outputs["Vector"], add_color.inputs[1])
    links.new(add_color.outputs["Vector"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], out.inputs["Surface"])
    if with_label_aov:
        geo_label = nodes.new("ShaderNodeAttribute")
        geo_label.attribute_type = "GEOMETRY"
        geo_label.attribute_name = LABEL_ATTR
        obj_label = nodes.new("ShaderNodeAttribute")
        obj_label.attribute_type = "OBJECT"
        obj_label.attribute_name = OBJECT_CLASS_PROP
        add_label = nodes.new("ShaderNodeMath")
        add_label.operation = "ADD"
        aov = nodes.new("ShaderNodeOutputAOV")
        aov.aov_name = LABEL_AOV
        links.new(geo_label.outputs["Fac"], add_label.inputs[0])
        links.new(obj_label.outputs["Fac"], add_label.inputs[1])
        links.new(add_label.outputs["Value"], aov.inputs["Value"])


def ensure_display_material():
    """Unlit point colors for the viewport and for any engine that shows the cloud itself."""
    import bpy

    mat = bpy.data.materials.get(DISPLAY_MATERIAL)
    if mat is None:
        mat = bpy.data.materials.new(DISPLAY_MATERIAL)
        _emission_from_attributes(mat, with_label_aov=False)
    return mat


def ensure_deep_buffer_material():
    """The helper scene's view-layer material override: unlit albedo + label AOV for every object it draws."""
    import bpy

    mat = bpy.data.materials.get(DEEP_BUFFER_MATERIAL)
    if mat is None:
        mat = bpy.data.materials.new(DEEP_BUFFER_MATERIAL)
        mat.use_fake_user = False
        _emission_from_attributes(mat, with_label_aov=True)
    return mat


def is_point_cloud(obj) -> bool:
    """True for point-cloud objects made by :func:`create_point_cloud` (they carry our modifier)."""
    return bool(obj.get(POINTS_MARK)) and obj.modifiers.get(MODIFIER_NAME) is not None


def has_semantic_class(obj) -> bool:
    """True for objects the deep buffer draws: our point clouds and anything with a class (attribute or property)."""
    if obj.type not in {"MESH", "POINTCLOUD", "CURVES"}:
        return False
    if is_point_cloud(obj) or OBJECT_CLASS_PROP in obj.keys():
        return True
    data = obj.data
    return data is not None and hasattr(data, "attributes") and LABEL_ATTR in data.attributes


def _scale_socket_identifier(group) -> str:
    for item in group.interface.items_tree:
        if getattr(item, "in_out", None) == "INPUT" and item.name == SCALE_SOCKET:
            return item.identifier
    raise RuntimeError(f"node group {group.name!r} has no {SCALE_SOCKET!r} input; delete it to have it rebuilt")


def set_splat_scale(obj, scale: float) -> None:
    """Set the radius-per-distance factor of a point cloud (pixels / focal length in pixels)."""
    mod = obj.modifiers[MODIFIER_NAME]
    ident = _scale_socket_identifier(mod.node_group)
    if abs(float(compat.modifier_input(mod, ident)) - scale) > 1e-12 * max(1.0, abs(scale)):
        compat.set_modifier_input(obj, mod, ident, float(scale))


def create_point_cloud(name: str, xyz: np.ndarray, colors_linear: np.ndarray, labels: np.ndarray | None,
                       collection, *, point_ids: np.ndarray | None = None, progress: Progress | None = None):
    """A point-cloud object: vertices + linear FLOAT_COLOR + INT label attributes + the points modifier.

    Arrays: ``xyz`` N x 3 float, ``colors_linear`` N x 3 float in [0, 1] (scene-linear), ``labels`` N ints
    (255 = unknown; None = all unknown), ``point_ids`` N ints stored as ``rerender_point_id`` (optional). Everything goes through ``foreach_set`` so millions of points take well
    under a second.
    """
    import bpy

    xyz = np.ascontiguousarray(xyz, dtype=np.float32)
    n = len(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"point positions must be N x 3, got {xyz.shape}")
    colors_linear = np.asarray(colors_linear, dtype=np.float32)
    if colors_linear.shape != (n, 3):
        raise ValueError(f"point colors must be {n} x 3 (one linear RGB per point), got {colors_linear.shape}")
    if labels is None:
        labels = np.full(n, 255, np.int32)
    labels = np.asarray(labels).astype(np.int32)
    if labels.shape != (n,):
        raise ValueError(f"point labels must have one entry per point ({n}), got {labels.shape}")

    report = progress or (lambda f, s: None)
    mesh = bpy.data.meshes.new(name)
    obj = None
    try:
        mesh.vertices.add(n)
        mesh.vertices.foreach_set("co", xyz.ravel())
        report(0.4, "points: colors")
        rgba = np.ones((n, 4), np.float32)
        rgba[:, :3] = colors_linear
        mesh.attributes.new(COLOR_ATTR, "FLOAT_COLOR", "POINT").data.foreach_set("color", rgba.ravel())
        report(0.7, "points: labels")
        mesh.attributes.new(LABEL_ATTR, "INT", "POINT").data.foreach_set("value", labels)
        if point_ids is not None:
            ids = np.asarray(point_ids).astype(np.int32)
            if ids.shape != (n,):
                raise ValueError(f"point ids must have one entry per point ({n}), got {ids.shape}")
            mesh.attributes.new(POINT_ID_ATTR, "INT", "POINT").data.foreach_set("value", ids)
        mesh.update()
        obj = bpy.data.objects.new(name, mesh)
        obj[POINTS_MARK] = True
        mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
        mod.node_group = ensure_points_node_group()
        obj.data.materials.append(ensure_display_material())
        collection.objects.link(obj)
    except BaseException:
        if obj is not None:
            bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)
        raise
    report(1.0, "points: done")
    return obj


def point_positions(obj, max_points: int | None = None, seed: int = 0) -> np.ndarray:
    """Object-space vertex positions (float32 N x 3), optionally a fixed random subsample of at most max_points."""
    mesh = obj.data
    n = len(mesh.vertices)
    co = np.empty(n * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(n, 3)
    if max_points is not None and n > max_points:
        co = co[np.random.default_rng(seed).choice(n, max_points, replace=False)]
    return co

"""Point rasterizer on Blender's ``gpu`` module, for the viewport preview only (docs/addon.md, "Viewport
preview").

Why a second rasterizer: ``view_draw`` runs inside Blender's draw loop, where the nested EEVEE render of
``deep_buffer.render_deep_buffer`` cannot run, and the ``gpu`` module draws a million points in a fraction of a
second (docs/addon.md). Why only for the preview: the network was trained on EEVEE's buffers
(docs/design.md §1, one rasterizer), so final frames always come from EEVEE; the preview's buffers are checked
against EEVEE's within a stated tolerance (tests/test_viewport.py) so that what the artist previews is what the
network expects.

Same contract as the EEVEE deep buffer (docs/design.md §3): color (linear albedo), planar depth, label, mask.
Points are squares of side ``round(sqrt(2) * splat_px)`` pixels (the area of EEVEE's diamonds of radius ``splat_px``).
The ``gpu`` module needs a GPU context: the viewport has one; background mode has none (the test runs it inside a
render engine with ``bl_use_gpu_context = True``).
"""

from __future__ import annotations

import math

import numpy as np

from ._bridge import UNKNOWN, DeepBuffer

_shader = None

_VERTEX = """
void main() {
    vec4 view_pos = view * vec4(pos, 1.0);
    gl_Position = projection * view_pos;
    gl_PointSize = pointSize;
    vColor = color;
    vLabel = label;
    vDepth = -view_pos.z;
}
"""
_FRAGMENT = """
void main() {
    outColor = vec4(vColor, 1.0);
    outData = vec4(vLabel, vDepth, 0.0, 1.0);
}
"""


def _point_shader():
    """Color + (label, planar depth) into two float targets; compiled once per Blender session."""
    global _shader
    if _shader is None:
        import gpu

        iface = gpu.types.GPUStageInterfaceInfo("rerender_points_iface")
        iface.flat("VEC3", "vColor")
        iface.flat("FLOAT", "vLabel")
        iface.smooth("FLOAT", "vDepth")
        info = gpu.types.GPUShaderCreateInfo()
        info.push_constant("MAT4", "view")
        info.push_constant("MAT4", "projection")
        info.push_constant("FLOAT", "pointSize")
        info.vertex_in(0, "VEC3", "pos")
        info.vertex_in(1, "VEC3", "color")
        info.vertex_in(2, "FLOAT", "label")
        info.vertex_out(iface)
        info.fragment_out(0, "VEC4", "outColor")
        info.fragment_out(1, "VEC4", "outData")
        info.vertex_source(_VERTEX)
        info.fragment_source(_FRAGMENT)
        _shader = gpu.shader.create_from_info(info)
    return _shader


def point_side_px(splat_px: float) -> float:
    """Square side with the area of EEVEE's diamond of radius ``splat_px`` (2 r^2)."""
    return max(1.0, float(round(math.sqrt(2.0) * splat_px)))


def _read(texture, width: int, height: int) -> np.ndarray:
    """A float texture as H x W x 4, rows bottom-up (GL order). gpu.types.Buffer's numpy view has column-major
    strides (blender-facts.md), so its values are taken through ``to_list`` order-safe."""
    buf = texture.read()
    return np.array(buf.to_list(), np.float32).reshape(height, width, 4)


def rasterize(xyz_world: np.ndarray, colors: np.ndarray, labels: np.ndarray, view_matrix: np.ndarray,
              projection_matrix: np.ndarray, size: tuple[int, int], splat_px: float) -> DeepBuffer:
    """Draw points (world xyz, linear colors, uint8 labels) into a deep buffer of ``size`` = (width, height).

    ``view_matrix`` is world->camera (Blender camera: looks down -z), ``projection_matrix`` the camera's (or the
    viewport's window matrix). Must run where a GPU context is active."""
    import gpu
    from gpu_extras.batch import batch_for_shader
    from mathutils import Matrix

    width, height = (int(v) for v in size)
    xyz = np.ascontiguousarray(xyz_world, np.float32)
    shader = _point_shader()
    color_tex = gpu.types.GPUTexture((width, height), format="RGBA32F")
    data_tex = gpu.types.GPUTexture((width, height), format="RGBA32F")
    depth_tex = gpu.types.GPUTexture((width, height), format="DEPTH_COMPONENT32F")
    framebuffer = gpu.types.GPUFrameBuffer(depth_slot=depth_tex, color_slots=(color_tex, data_tex))
    batch = batch_for_shader(shader, "POINTS", {"pos": xyz, "color": np.ascontiguousarray(colors, np.float32)[:, :3],
                                                "label": np.ascontiguousarray(labels, np.float32)})
    with framebuffer.bind():
        framebuffer.clear(color=(0.0, 0.0, 0.0, 0.0), depth=1.0)
        gpu.state.viewport_set(0, 0, width, height)
        gpu.state.depth_test_set("LESS_EQUAL")
        gpu.state.depth_mask_set(True)
        gpu.state.program_point_size_set(True)
        shader.bind()
        shader.uniform_float("view", Matrix(np.asarray(view_matrix, np.float64).tolist()))
        shader.uniform_float("projection", Matrix(np.asarray(projection_matrix, np.float64).tolist()))
        shader.uniform_float("pointSize", point_side_px(splat_px))
        batch.draw(shader)
        gpu.state.program_point_size_set(False)
        gpu.state.depth_test_set("NONE")
    color = _read(color_tex, width, height)[::-1]
    data = _read(data_tex, width, height)[::-1]
    mask = color[..., 3] > 0.5
    return DeepBuffer(color=np.where(mask[..., None], color[..., :3], 0).astype(np.float16),
                      depth=np.where(mask, data[..., 1], np.inf).astype(np.float32),
                      label=np.where(mask, np.clip(np.rint(data[..., 0]), 0, UNKNOWN), UNKNOWN).astype(np.uint8),
                      mask=mask)


def scene_points(scene, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World xyz, linear colors and labels of every visible Rerender point cloud of ``scene``."""
    from . import points as pts

    xyz_all, col_all, lab_all = [], [], []
    for obj in scene.objects:
        if obj.hide_render or not pts.is_point_cloud(obj):
            continue
        mesh = obj.data
        n = len(mesh.vertices)
        if n == 0:
            continue
        co = np.empty(n * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        m = np.array(obj.matrix_world, np.float32)
        xyz = co.reshape(n, 3) @ m[:3, :3].T + m[:3, 3]
        colors = np.zeros((n, 4), np.float32)
        attr = mesh.attributes.get(pts.COLOR_ATTR)
        if attr is not None:
            attr.data.foreach_get("color", colors.ravel())
        labels = np.full(n, UNKNOWN, np.int32)
        attr = mesh.attributes.get(pts.LABEL_ATTR)
        if attr is not None:
            attr.data.foreach_get("value", labels)
        xyz_all.append(xyz)
        col_all.append(colors[:, :3])
        lab_all.append(labels)
    if not xyz_all:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.int32)
    xyz, colors, labels = np.concatenate(xyz_all), np.concatenate(col_all), np.concatenate(lab_all)
    if max_points is not None and len(xyz) > max_points:
        keep = np.random.default_rng(0).choice(len(xyz), max_points, replace=False)
        xyz, colors, labels = xyz[keep], colors[keep], labels[keep]
    return xyz, colors, labels

"""Build the synthetic scene in Blender (bpy) and set it up for one photo: camera, appearance, transients.

Everything lives in one Blender scene named ``SCENE_NAME`` whose datablocks are prefixed ``synth.``; rebuilding
removes only those, so other scenes in the same process (the add-on's, a teammate's test) are left alone.

Textures are computed from WORLD positions (Geometry > Position), never object-local coordinates: repeated parts
(twin towers, columns) must look different to SfM, or it folds the camera arc onto itself
(reconstruction-facts.md). Every object carries its semantic class id in the custom property ``synth_class``;
the segmentation render reads it through an Object-attribute material override.
"""

from __future__ import annotations

import hashlib
import json
import math

import bpy
import numpy as np
from mathutils import Matrix, Vector

from .geometry import blender_camera_settings, blender_matrix_world
from .landmark import CAR, PERSON, floodlight_positions, lamp_positions, layout
from .meshes import car_mesh, mesh_for_part, person_mesh
from .spec import PhotoConditions, PhotoCamera, SceneSpec, Transient

SCENE_NAME = "RerenderSynthetic"
PREFIX = "synth."
CLASS_PROPERTY = "synth_class"
TRANSIENT_COLLECTION = PREFIX + "transients"
NIGHT_EMISSION_NODE = "night_emission"


def spec_hash(spec: SceneSpec) -> str:
    """What identifies a built scene: its description (render settings excluded: they change no geometry)."""
    data = spec.to_json()
    data.pop("render")
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def ensure_scene(spec: SceneSpec) -> bpy.types.Scene:
    """The built scene for ``spec``, reusing it when this process already built the same description."""
    scene = bpy.data.scenes.get(SCENE_NAME)
    if scene is not None and scene.get("synth_spec") == spec_hash(spec):
        return scene
    return build_scene(spec)


def remove_scene() -> None:
    """Delete the synthetic scene and every ``synth.`` datablock (and nothing else)."""
    scene = bpy.data.scenes.get(SCENE_NAME)
    if scene is not None:
        bpy.data.scenes.remove(scene)
    for collection in (bpy.data.objects, bpy.data.meshes, bpy.data.materials, bpy.data.lights, bpy.data.cameras,
                       bpy.data.worlds, bpy.data.collections):
        for block in [b for b in collection if b.name.startswith(PREFIX)]:
            collection.remove(block)


def build_scene(spec: SceneSpec) -> bpy.types.Scene:
    remove_scene()
    scene = bpy.data.scenes.new(SCENE_NAME)
    scene["synth_spec"] = spec_hash(spec)
    materials = _make_materials()
    for part in layout(spec.landmark):
        verts, faces = mesh_for_part(part.shape, part.params)
        obj = _add_mesh_object(scene.collection, PREFIX + part.name, verts, faces, [materials[part.material]],
                               smooth=part.shape in ("sphere", "dome") or part.material == "marble")
        obj[CLASS_PROPERTY] = part.label
    transients = bpy.data.collections.new(TRANSIENT_COLLECTION)
    scene.collection.children.link(transients)
    for kind, (mesh_and_mats, mats) in {"person": (person_mesh(), ["clothes", "skin"]),
                                        "car": (car_mesh(), ["paint", "glass", "tyre"])}.items():
        (verts, faces), face_mats = mesh_and_mats
        mesh = _mesh(PREFIX + "proto_" + kind, verts, faces, smooth=kind == "person")
        for m in mats:
            mesh.materials.append(materials[m])
        mesh.polygons.foreach_set("material_index", face_mats)
    _add_lights(scene, spec)
    _add_world(scene)
    cam_data = bpy.data.cameras.new(PREFIX + "camera")
    cam_data.clip_start, cam_data.clip_end = 0.1, 2000.0
    cam = bpy.data.objects.new(PREFIX + "camera", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    _configure_render(scene)
    return scene


# ---------------------------------------------------------------------------------------------------- geometry

def _mesh(name: str, verts: np.ndarray, faces, *, smooth: bool) -> bpy.types.Mesh:
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([tuple(v) for v in verts], [], [tuple(f) for f in faces])
    mesh.validate()
    if smooth:
        mesh.shade_smooth()
    return mesh


def _add_mesh_object(collection, name: str, verts, faces, mats, *, smooth: bool = False) -> bpy.types.Object:
    mesh = _mesh(name, verts, faces, smooth=smooth)
    for m in mats:
        mesh.materials.append(m)
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    return obj


# --------------------------------------------------------------------------------------------------- materials

def _new_material(name: str):
    mat = bpy.data.materials.new(PREFIX + name)
    nt = mat.node_tree
    nt.nodes.clear()
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    bsdf = nt.nodes.new("ShaderNodeBsdfPrincipled")
    bsdf.name = "bsdf"
    nt.links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    return mat, nt, bsdf


def _world_uv(nt, mode: str):
    """World position -> 2D pattern coordinates: 'wall' (x + y, z) for vertical faces, 'floor' (x, y)."""
    geo = nt.nodes.new("ShaderNodeNewGeometry")
    sep = nt.nodes.new("ShaderNodeSeparateXYZ")
    nt.links.new(geo.outputs["Position"], sep.inputs[0])
    comb = nt.nodes.new("ShaderNodeCombineXYZ")
    if mode == "wall":
        add = nt.nodes.new("ShaderNodeMath")
        add.operation = "ADD"
        nt.links.new(sep.outputs["X"], add.inputs[0])
        nt.links.new(sep.outputs["Y"], add.inputs[1])
        nt.links.new(add.outputs[0], comb.inputs["X"])
        nt.links.new(sep.outputs["Z"], comb.inputs["Y"])
    else:
        nt.links.new(sep.outputs["X"], comb.inputs["X"])
        nt.links.new(sep.outputs["Y"], comb.inputs["Y"])
    return comb.outputs[0], geo.outputs["Position"]


def _noise(nt, vector, scale: float, detail: float = 4.0):
    n = nt.nodes.new("ShaderNodeTexNoise")
    n.noise_dimensions = "3D"
    n.inputs["Scale"].default_value = scale
    n.inputs["Detail"].default_value = detail
    nt.links.new(vector, n.inputs["Vector"])
    return n


def _modulate(nt, color_socket, position, scale: float, low: float, high: float):
    """Multiply a color by large-scale world noise mapped to [low, high]: no two places look alike."""
    n = _noise(nt, position, scale, 3.0)
    ramp = nt.nodes.new("ShaderNodeMapRange")
    ramp.inputs["From Min"].default_value, ramp.inputs["From Max"].default_value = 0.3, 0.7
    ramp.inputs["To Min"].default_value, ramp.inputs["To Max"].default_value = low, high
    nt.links.new(n.outputs["Fac"], ramp.inputs["Value"])
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.blend_type = "MULTIPLY"
    mix.inputs["Factor"].default_value = 1.0
    nt.links.new(color_socket, mix.inputs["A"])
    nt.links.new(ramp.outputs["Result"], mix.inputs["B"])
    return mix.outputs["Result"]


def _brick_material(name, mode, c1, c2, mortar, brick_w, row_h, roughness, variation=(0.7, 1.2), var_scale=0.12):
    mat, nt, bsdf = _new_material(name)
    uv, pos = _world_uv(nt, mode)
    brick = nt.nodes.new("ShaderNodeTexBrick")
    brick.inputs["Color1"].default_value = (*c1, 1)
    brick.inputs["Color2"].default_value = (*c2, 1)
    brick.inputs["Mortar"].default_value = (*mortar, 1)
    brick.inputs["Scale"].default_value = 1.0
    brick.inputs["Brick Width"].default_value = brick_w
    brick.inputs["Row Height"].default_value = row_h
    brick.inputs["Mortar Size"].default_value = 0.025
    brick.inputs["Bias"].default_value = 0.0  # each brick a random shade between the two colors: SIFT-friendly
    brick.offset = 0.5
    nt.links.new(uv, brick.inputs["Vector"])
    # Weathering stains at ~0.5-2 m and grain: every brick neighbourhood differs, so SIFT's ratio test does not
    # reject the matches as it would on a clean, periodic brick pattern.
    stains = _noise(nt, pos, 0.8, 5.0)
    stained = nt.nodes.new("ShaderNodeMix")
    stained.data_type = "RGBA"
    stained.blend_type = "OVERLAY"
    stained.inputs["Factor"].default_value = 0.6
    nt.links.new(brick.outputs["Color"], stained.inputs["A"])
    nt.links.new(stains.outputs["Fac"], stained.inputs["B"])
    fine = _noise(nt, pos, 6.0, 6.0)
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.blend_type = "OVERLAY"
    mix.inputs["Factor"].default_value = 0.35
    nt.links.new(stained.outputs["Result"], mix.inputs["A"])
    nt.links.new(fine.outputs["Fac"], mix.inputs["B"])
    nt.links.new(_modulate(nt, mix.outputs["Result"], pos, var_scale, *variation), bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = roughness
    return mat


def _noise_material(name, c1, c2, scale, roughness, metallic=0.0, variation=(0.75, 1.2)):
    mat, nt, bsdf = _new_material(name)
    geo = nt.nodes.new("ShaderNodeNewGeometry")
    n = _noise(nt, geo.outputs["Position"], scale, 6.0)
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.inputs["A"].default_value = (*c1, 1)
    mix.inputs["B"].default_value = (*c2, 1)
    nt.links.new(n.outputs["Fac"], mix.inputs["Factor"])
    nt.links.new(_modulate(nt, mix.outputs["Result"], geo.outputs["Position"], 0.1, *variation),
                 bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = roughness
    bsdf.inputs["Metallic"].default_value = metallic
    return mat


def _flat_material(name, color, roughness, *, object_color=False, emission=None):
    mat, nt, bsdf = _new_material(name)
    if object_color:
        info = nt.nodes.new("ShaderNodeObjectInfo")
        nt.links.new(info.outputs["Color"], bsdf.inputs["Base Color"])
    else:
        bsdf.inputs["Base Color"].default_value = (*color, 1)
    bsdf.inputs["Roughness"].default_value = roughness
    if emission is not None:
        bsdf.inputs["Emission Color"].default_value = (*emission, 1)
        bsdf.inputs["Emission Strength"].default_value = 0.0
        bsdf.label = NIGHT_EMISSION_NODE
    return mat


def _make_materials() -> dict:
    return {
        "stone": _brick_material("stone", "wall", (0.6, 0.54, 0.45), (0.3, 0.27, 0.23), (0.16, 0.15, 0.14), 0.9, 0.36, 0.8),
        "slate": _brick_material("slate", "wall", (0.16, 0.18, 0.22), (0.22, 0.22, 0.25), (0.1, 0.1, 0.12), 0.5, 0.25,
                                 0.6),
        "paving": _brick_material("paving", "floor", (0.52, 0.49, 0.45), (0.26, 0.25, 0.23), (0.14, 0.14, 0.13), 0.6, 0.3,
                                  0.85, variation=(0.6, 1.3), var_scale=0.08),
        "copper": _noise_material("copper", (0.2, 0.45, 0.38), (0.32, 0.28, 0.18), 0.6, 0.45, 0.3),
        "marble": _noise_material("marble", (0.6, 0.58, 0.55), (0.4, 0.38, 0.36), 1.5, 0.65),
        "asphalt": _noise_material("asphalt", (0.06, 0.06, 0.065), (0.14, 0.14, 0.15), 3.0, 0.9),
        "grass": _noise_material("grass", (0.08, 0.22, 0.04), (0.2, 0.36, 0.08), 0.8, 0.95, variation=(0.6, 1.3)),
        "bark": _noise_material("bark", (0.15, 0.1, 0.06), (0.28, 0.2, 0.12), 8.0, 0.9),
        "foliage": _noise_material("foliage", (0.05, 0.18, 0.03), (0.16, 0.32, 0.06), 2.5, 0.9),
        "metal": _flat_material("metal", (0.08, 0.08, 0.09), 0.4),
        "clock": _flat_material("clock", (0.88, 0.86, 0.8), 0.5, emission=(1.0, 0.9, 0.7)),
        "window": _flat_material("window", (0.02, 0.025, 0.03), 0.15, emission=(1.0, 0.7, 0.35)),
        "lamp_glass": _flat_material("lamp_glass", (0.9, 0.9, 0.85), 0.3, emission=(1.0, 0.8, 0.5)),
        "clothes": _flat_material("clothes", (0.5, 0.5, 0.5), 0.8, object_color=True),
        "skin": _flat_material("skin", (0.72, 0.52, 0.4), 0.6),
        "paint": _flat_material("paint", (0.5, 0.5, 0.5), 0.3, object_color=True),
        "glass": _flat_material("glass", (0.03, 0.04, 0.05), 0.1),
        "tyre": _flat_material("tyre", (0.02, 0.02, 0.02), 0.9),
    }


def segmentation_material() -> bpy.types.Material:
    """Emission of the object's class id (Object attribute ``synth_class``): exact ids with 1 sample, filter 0."""
    mat = bpy.data.materials.get(PREFIX + "segmentation")
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(PREFIX + "segmentation")
    nt = mat.node_tree
    nt.nodes.clear()
    attr = nt.nodes.new("ShaderNodeAttribute")
    attr.attribute_type = "OBJECT"
    attr.attribute_name = CLASS_PROPERTY
    emit = nt.nodes.new("ShaderNodeEmission")
    emit.inputs["Strength"].default_value = 1.0
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    nt.links.new(attr.outputs["Fac"], emit.inputs["Color"])
    nt.links.new(emit.outputs["Emission"], out.inputs["Surface"])
    return mat


# ------------------------------------------------------------------------------------------- lights and world

def _add_lights(scene, spec: SceneSpec) -> None:
    sun = bpy.data.objects.new(PREFIX + "sun", bpy.data.lights.new(PREFIX + "sun", "SUN"))
    scene.collection.objects.link(sun)
    for k, (x, y) in enumerate(lamp_positions(spec.landmark)):
        light = bpy.data.lights.new(PREFIX + f"lamp_{k}", "POINT")
        light.shadow_soft_size = 0.3
        light.use_shadow = False  # many small lights: shadows would cost more than they show
        obj = bpy.data.objects.new(PREFIX + f"lamp_{k}", light)
        obj.location = (x, y, 4.4)
        obj["synth_night_energy"] = 400.0
        scene.collection.objects.link(obj)
    for k, xyz in enumerate(floodlight_positions(spec.landmark)):
        light = bpy.data.lights.new(PREFIX + f"flood_{k}", "POINT")
        light.shadow_soft_size = 0.5
        obj = bpy.data.objects.new(PREFIX + f"flood_{k}", light)
        obj.location = xyz
        obj["synth_night_energy"] = 2500.0
        scene.collection.objects.link(obj)


def _add_world(scene) -> None:
    world = bpy.data.worlds.new(PREFIX + "world")
    scene.world = world
    nt = world.node_tree
    nt.nodes.clear()
    sky = nt.nodes.new("ShaderNodeTexSky")
    sky.name = "sky"
    sky.sky_type = "MULTIPLE_SCATTERING"
    sky.sun_disc = False
    scale = nt.nodes.new("ShaderNodeMix")
    scale.name = "sky_strength"
    scale.data_type = "RGBA"
    scale.blend_type = "MULTIPLY"
    scale.inputs["Factor"].default_value = 1.0
    clouds = nt.nodes.new("ShaderNodeMix")
    clouds.name = "clouds"
    clouds.data_type = "RGBA"
    bg = nt.nodes.new("ShaderNodeBackground")
    out = nt.nodes.new("ShaderNodeOutputWorld")
    nt.links.new(sky.outputs["Color"], scale.inputs["A"])
    nt.links.new(scale.outputs["Result"], clouds.inputs["A"])
    nt.links.new(clouds.outputs["Result"], bg.inputs["Color"])
    nt.links.new(bg.outputs["Background"], out.inputs["Surface"])


def _configure_render(scene) -> None:
    r = scene.render
    r.engine = "BLENDER_EEVEE"
    r.resolution_percentage = 100
    ee = scene.eevee
    ee.use_raytracing = False
    ee.use_fast_gi = False
    ee.shadow_ray_count = 1
    ee.shadow_step_count = 4
    r.image_settings.file_format = "PNG"


# ------------------------------------------------------------------------------------------------- per photo

def set_camera(scene, camera: PhotoCamera) -> None:
    cam = scene.camera
    settings = blender_camera_settings(camera)
    data = cam.data
    data.sensor_fit = settings["sensor_fit"]
    data.sensor_width = settings["sensor_width"]
    data.lens = settings["lens"]
    data.shift_x = settings["shift_x"]
    data.shift_y = settings["shift_y"]
    scene.render.resolution_x, scene.render.resolution_y = camera.width, camera.height
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = settings["pixel_aspect"]
    cam.matrix_world = Matrix(blender_matrix_world(camera).tolist())


def sun_direction(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """Unit vector towards the sun; azimuth from +X towards +Y."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    return np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])


def apply_appearance(scene, appearance: PhotoConditions) -> None:
    a = appearance
    sun = scene.objects[PREFIX + "sun"]
    direction = Vector(sun_direction(a.sun_elevation_deg, a.sun_azimuth_deg).tolist())
    sun.rotation_mode = "QUATERNION"
    sun.rotation_quaternion = direction.to_track_quat("Z", "Y")
    sun.data.energy = a.sun_strength
    sun.data.color = a.sun_color
    sun.data.angle = math.radians(a.sun_angle_deg)
    sun.hide_render = a.sun_strength <= 0
    nt = scene.world.node_tree
    sky = nt.nodes["sky"]
    sky.sun_elevation = math.radians(a.sun_elevation_deg)
    # Cycles' sky (svm_sky.h): sun = (-cos e sin r, cos e cos r, sin e), so rotation r = azimuth - 90 degrees
    # puts the sky's bright spot where the sun lamp shines from.
    sky.sun_rotation = math.radians(a.sun_azimuth_deg - 90.0) % (2 * math.pi)
    sky.air_density = a.air_density
    sky.aerosol_density = a.aerosol_density
    nt.nodes["sky_strength"].inputs["B"].default_value = (a.sky_strength,) * 3 + (1.0,)
    clouds = nt.nodes["clouds"]
    clouds.inputs["Factor"].default_value = a.cloud_cover
    clouds.inputs["B"].default_value = (*a.cloud_color, 1.0)
    for obj in scene.objects:
        if "synth_night_energy" in obj:
            obj.data.energy = obj["synth_night_energy"] * a.night_lights
            obj.data.color = a.lamp_color
            obj.hide_render = a.night_lights <= 0
    for mat in bpy.data.materials:
        if mat.name.startswith(PREFIX) and mat.node_tree is not None:
            for node in mat.node_tree.nodes:
                if node.label == NIGHT_EMISSION_NODE:
                    node.inputs["Emission Strength"].default_value = 2.0 * a.night_lights
    vs = scene.view_settings
    vs.exposure = a.exposure_ev
    vs.use_white_balance = True
    vs.white_balance_temperature = a.white_balance_temperature
    vs.white_balance_tint = a.white_balance_tint


def place_transients(scene, transients: list[Transient]) -> None:
    """Replace the transient objects with these (objects share two prototype meshes; color per object)."""
    collection = bpy.data.collections[TRANSIENT_COLLECTION]
    for obj in list(collection.objects):
        bpy.data.objects.remove(obj)
    for k, tr in enumerate(transients):
        obj = bpy.data.objects.new(PREFIX + f"{tr.kind}_{k}", bpy.data.meshes[PREFIX + "proto_" + tr.kind])
        obj.location = (tr.x, tr.y, 0.0)
        obj.rotation_euler = (0.0, 0.0, math.radians(tr.heading_deg))
        obj.scale = (tr.scale,) * 3
        obj.color = (*tr.color, 1.0)
        obj[CLASS_PROPERTY] = PERSON if tr.kind == "person" else CAR
        collection.objects.link(obj)

"""Everything that differs between the Blender releases the add-on supports (4.5 LTS to 5.3), in one place.

Why one module: the rest of the add-on states what it wants ("the compositor tree of this scene", "set this
Geometry Nodes input") and never asks which Blender it runs in. Each function detects the API it needs
(``hasattr``, RNA enum items) instead of comparing version numbers, so a point release that back-ports an API
keeps working, and the next release that moves one breaks in exactly one function. docs/install.md lists the
releases and what changed between them.

What differs:
- EEVEE's engine id: 'BLENDER_EEVEE_NEXT' in 4.2-4.5, 'BLENDER_EEVEE' from 5.0.
- The compositor: 4.x keeps one node tree embedded in the scene (``scene.use_nodes`` + ``scene.node_tree``);
  5.0-5.2 assign a node-group data-block (``scene.compositing_node_group``); 5.3 deprecates that property (it
  goes away in 6.0) in favour of ``scene.compositor_effects``, a list of node groups.
- File Output nodes: 4.x ``base_path`` + ``file_slots`` (each slot's path is its file name prefix); 5.0+
  ``directory`` + ``file_name`` + ``file_output_items``.
- Image settings: 5.0+ choose multilayer EXR through ``media_type``; 4.x through ``file_format``.
- Geometry Nodes modifier inputs: ID properties (``mod[identifier]``) up to 5.1; RNA properties
  (``mod.properties.inputs.<identifier>.value``) from 5.2, where the object must be tagged for update.
- EEVEE 4.x drops the shader AOVs of a view-layer material override (the one behaviour asked by version).
- Since 5.2 a scene created in the session has no layer collection until its view layer is synced.
- Material node trees are opt-in in 4.x (``use_nodes``, deprecated in 5.0 where they are always on).
- OpenImageIO: most builds ship its Python module in Blender's private site-packages; where it is missing a
  pure-numpy EXR reader (exr_read.py) takes over.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# ---------------------------------------------------------------------------------------------- render engine


def eevee_engine_id() -> str:
    """The EEVEE render engine's id in this Blender ('BLENDER_EEVEE', or 'BLENDER_EEVEE_NEXT' in 4.2-4.5)."""
    import bpy

    items = {e.identifier for e in bpy.types.RenderSettings.bl_rna.properties["engine"].enum_items}
    for candidate in ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT"):
        if candidate in items:
            return candidate
    raise RuntimeError(f"this Blender has no EEVEE render engine (engines: {sorted(items)}); the deep buffer "
                       "needs EEVEE: use an official Blender 4.5 LTS to 5.3 build")


def blender_version_string() -> str:
    """'4.5.15', '5.0.1', ... of the running Blender (for reports and messages; never used to pick an API)."""
    import bpy

    return ".".join(str(v) for v in bpy.app.version)


def material_override_keeps_aovs() -> bool:
    """Whether EEVEE writes the shader AOVs of a view layer's material override (5.0+). EEVEE in 4.2-4.5 renders
    the override's surface but its AOVs read 0 (measured with bpy 4.5.15: a constant AOV of 7 came back 0, the
    same material on the object gave 7). Nothing in the API shows it, so this one asks the version."""
    import bpy

    return bpy.app.version >= (5, 0, 0)


def material_node_tree(material):
    """The shader node tree of ``material``, switched on where node trees are opt-in (4.x; 5.0 deprecates
    ``Material.use_nodes``, always on)."""
    if material.node_tree is None:
        material.use_nodes = True
    return material.node_tree


def layer_collection(view_layer):
    """The root LayerCollection of a view layer. Since 5.2 a scene made in this session has none until its view
    layer is synced (``view_layer.update()``); earlier releases create it with the scene."""
    if view_layer.layer_collection is None:
        view_layer.update()
    return view_layer.layer_collection


# ---------------------------------------------------------------------------------------------- compositor


def _has_rna(struct, name: str) -> bool:
    """Whether an RNA struct has a property, asked without reading it (a deprecated one warns when read)."""
    return name in struct.bl_rna.properties


def _has_compositor_effects(scene) -> bool:
    return _has_rna(scene, "compositor_effects")


def compositor_tree(scene):
    """The node tree the compositor of ``scene`` runs, or None when it has none."""
    if _has_compositor_effects(scene):  # 5.3+: the first effect is ours (helper scenes hold only one)
        effects = scene.compositor_effects
        for effect in effects:
            group = getattr(effect, "node_group", None)
            if group is not None:
                return group
        return None
    if _has_rna(scene, "compositing_node_group"):  # 5.0 - 5.2
        return scene.compositing_node_group
    return scene.node_tree if scene.use_nodes else None  # 4.x: a tree embedded in the scene


def new_compositor_tree(scene, name: str):
    """Give ``scene`` a fresh, empty compositor node tree and return it (replacing any it had).

    4.x cannot hold a tree data-block: its embedded tree is switched on and emptied (``name`` is unused there).
    """
    import bpy

    if not _has_compositor_effects(scene) and not _has_rna(scene, "compositing_node_group"):  # 4.x
        scene.use_nodes = True
        tree = scene.node_tree
        tree.nodes.clear()
        return tree
    group = bpy.data.node_groups.new(name, "CompositorNodeTree")
    set_compositor_tree(scene, group)
    return group


def set_compositor_tree(scene, tree) -> None:
    """Make ``tree`` (a CompositorNodeTree data-block, or None) the compositor of ``scene`` (5.0+)."""
    if _has_compositor_effects(scene):
        _set_compositor_effect(scene, tree)
        return
    if _has_rna(scene, "compositing_node_group"):
        scene.compositing_node_group = tree
        return
    if tree is None:
        scene.use_nodes = False
        return
    raise RuntimeError("this Blender keeps one compositor tree inside each scene; use new_compositor_tree()")


def _set_compositor_effect(scene, tree) -> None:
    """5.3+: the scene's compositor effects become exactly ``tree`` (none for None), enabled for final renders."""
    effects = scene.compositor_effects
    effects.clear()
    if tree is not None:
        effect = effects.new(tree.name)
        effect.node_group = tree
        effect.enable_for_render = True


# ---------------------------------------------------------------------------------------------- file output


def file_output_node(tree, name: str, items: tuple[tuple[str, str], ...]):
    """A File Output node in ``tree`` with one input per (item name, socket type 'RGBA' | 'FLOAT'), writing
    single-layer float EXRs (uncompressed: the files live in RAM for milliseconds)."""
    node = tree.nodes.new("CompositorNodeOutputFile")
    node.name = name
    fmt = node.format
    if hasattr(fmt, "media_type"):  # 5.0+: single-layer images, one file per item
        fmt.media_type = "IMAGE"
    fmt.file_format = "OPEN_EXR"
    fmt.color_depth = "32"
    fmt.exr_codec = "NONE"
    fmt.color_mode = "RGBA"
    if hasattr(node, "file_output_items"):  # 5.0+
        for item, socket_type in items:
            node.file_output_items.new(socket_type, item)
    else:  # 4.x: slots are RGBA inputs; a float linked to one is written to every colour channel
        node.file_slots.clear()
        for item, _socket_type in items:
            node.file_slots.new(item)
    return node


def set_file_output_target(node, folder: str | os.PathLike, prefix: str) -> None:
    """Point a File Output node at ``folder``; every file it writes starts with ``prefix`` and contains its item
    name (the frame number and extension follow)."""
    folder = str(folder).rstrip(os.sep) + os.sep
    if hasattr(node, "file_output_items"):  # 5.0+: directory + file name, items appended
        node.directory = folder
        node.file_name = prefix
        return
    node.base_path = folder  # 4.x: each slot's path is its file name (prefix + item)
    for slot, socket in zip(node.file_slots, node.inputs):
        slot.path = f"{prefix}{socket.name}_"


# ---------------------------------------------------------------------------------------------- image settings


def set_multilayer_exr(image_settings) -> None:
    """Render output as one multilayer OpenEXR with every pass (Combined, Depth, the engine's own passes)."""
    if hasattr(image_settings, "media_type"):  # 5.0+: the media type picks multilayer
        image_settings.media_type = "MULTI_LAYER_IMAGE"
    image_settings.file_format = "OPEN_EXR_MULTILAYER"


def set_single_image(image_settings, file_format: str) -> None:
    """Render output as single-layer images of ``file_format`` ('PNG', 'OPEN_EXR', ...)."""
    if hasattr(image_settings, "media_type"):
        image_settings.media_type = "IMAGE"
    image_settings.file_format = file_format


# ---------------------------------------------------------------------------------------------- geometry nodes


def _rna_input(mod, identifier: str):
    """5.2+: the RNA property of a Geometry Nodes modifier input, or None on Blenders that use ID properties."""
    props = getattr(mod, "properties", None)
    inputs = getattr(props, "inputs", None)
    return getattr(inputs, identifier, None) if inputs is not None else None


def modifier_input(mod, identifier: str):
    """The value of a Geometry Nodes modifier input (by socket identifier)."""
    item = _rna_input(mod, identifier)
    if item is not None:
        return item.value
    return mod[identifier]


def set_modifier_input(obj, mod, identifier: str, value) -> None:
    """Set a Geometry Nodes modifier input and tag the object so the next evaluation uses the new value."""
    item = _rna_input(mod, identifier)
    if item is not None:
        item.value = value
    else:
        mod[identifier] = value
    obj.update_tag()


# ---------------------------------------------------------------------------------------------- OpenImageIO


def action_fcurves(animation_data) -> list:
    """Every F-curve of an ID's action: 4.4+ keeps them in layered actions' channel bags, older actions directly."""
    action = animation_data.action if animation_data is not None else None
    if action is None:
        return []
    if not hasattr(action, "layers"):
        return list(action.fcurves)
    curves: list = []
    for layer in action.layers:
        for strip in layer.strips:
            bag = strip.channelbag(animation_data.action_slot)
            if bag is not None:
                curves.extend(bag.fcurves)
    return curves


def blender_site_packages() -> list[Path]:
    """Blender's private site-packages folders (where its OpenImageIO module lives), existing ones first."""
    import bpy

    local = Path(bpy.utils.resource_path("LOCAL"))
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [local / "python" / "lib" / ver / "site-packages", local / "python" / "lib" / "site-packages",
                  local / "python" / "Lib" / "site-packages"]
    return sorted(candidates, key=lambda p: not p.is_dir())


_oiio_checked = False
_oiio = None


def openimageio():
    """Blender's OpenImageIO module, or None where this Blender build ships none (looked up once)."""
    global _oiio_checked, _oiio
    if _oiio_checked:
        return _oiio
    _oiio_checked = True
    try:
        import OpenImageIO
    except ImportError:
        for folder in blender_site_packages():
            if (folder / "OpenImageIO").exists() and str(folder) not in sys.path:
                sys.path.append(str(folder))
        try:
            import OpenImageIO
        except ImportError:
            return None
    _oiio = OpenImageIO
    return _oiio

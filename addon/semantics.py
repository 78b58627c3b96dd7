"""Semantic edits (docs/artist-workflow.md): give any Blender object a class, hide the photos' transient points.

Why an enum that writes the ``rerender_class`` custom property: the deep-buffer material already reads that
property per object (``points.OBJECT_CLASS_PROP``, an OBJECT attribute of the label AOV) and the helper scene
already links every object that has it, so an artist's "person" proxy reaches the label pass through the very
path the rasterizer has always used; the enum is the artist-facing face of it (names from the class table instead
of numbers). "None" removes the property, and the object leaves the deep buffer again.

The scene toggles live in ``scene.rerender`` (``hide_transient``, ``fill_labels``): the first is honoured by
``deep_buffer.render_deep_buffer`` (a Geometry Nodes filter on the point clouds), the second by the engine (the
backend's S fills pixels no point covers, and the Label pass shows the labels the network actually received).
"""

from __future__ import annotations

import bpy

from . import points as pts
from ._bridge import bridge

NONE = "NONE"


def class_table():
    """The class table the add-on offers (Cityscapes, as the default bundles; docs/design.md §4)."""
    return bridge.classes.DEFAULT_CLASSES


def _identifier(name: str) -> str:
    return name.upper().replace(" ", "_")


def _class_items() -> list[tuple[str, str, str, int]]:
    items = [(NONE, "None", "Not drawn in the deep buffer (unless it is a point cloud)", 0)]
    for c in class_table():
        kind = "transient (people, vehicles)" if c.transient else "static"
        items.append((_identifier(c.name), c.name.title(), f"Class {c.id}, {kind}", c.id + 1))
    return items


CLASS_ITEMS = _class_items()  # enum items must stay referenced while registered (Blender keeps pointers)


def _on_class_changed(self, context) -> None:
    obj = self.id_data
    class_id = class_id_of(self.semantic_class)
    if class_id is None:
        if pts.OBJECT_CLASS_PROP in obj.keys():
            del obj[pts.OBJECT_CLASS_PROP]
    else:
        obj[pts.OBJECT_CLASS_PROP] = class_id
    obj.update_tag()


def class_id_of(identifier: str) -> int | None:
    """Class id of an enum identifier (``"PERSON"`` -> 11); None for ``"NONE"``."""
    if identifier == NONE:
        return None
    for c in class_table():
        if _identifier(c.name) == identifier:
            return c.id
    raise ValueError(f"unknown semantic class {identifier!r}; known: {[i[0] for i in CLASS_ITEMS]}")


class RerenderObjectSemantics(bpy.types.PropertyGroup):
    """``object.rerender``: the object's semantic class in the deep buffer's label pass."""

    semantic_class: bpy.props.EnumProperty(
        name="Semantic Class", items=CLASS_ITEMS, default=NONE, update=_on_class_changed,
        description="Class this object has in the label pass the network receives (e.g. a 'Person' proxy where "
        "you want people drawn)",
    )


def set_object_class(obj: bpy.types.Object, name: str | None) -> None:
    """Tag ``obj`` with the class called ``name`` ("person", "car", ...), or untag it with None."""
    if name is None:
        obj.rerender.semantic_class = NONE
        return
    class_table().id_of(name)  # a clear KeyError listing the classes for a typo
    obj.rerender.semantic_class = _identifier(name)


def object_class(obj: bpy.types.Object) -> int | None:
    """The class id the deep buffer draws ``obj`` with when it is tagged per object; None otherwise."""
    value = obj.get(pts.OBJECT_CLASS_PROP)
    return None if value is None else int(value)


class RERENDER_PT_object_semantics(bpy.types.Panel):
    bl_idname = "RERENDER_PT_object_semantics"
    bl_label = "Rerender Semantics"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "object"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        obj = context.object
        return obj is not None and obj.type in {"MESH", "POINTCLOUD", "CURVES"}

    def draw(self, context: bpy.types.Context) -> None:
        obj = context.object
        layout = self.layout
        if pts.is_point_cloud(obj):
            layout.label(text="Point cloud: each point carries its own label", icon="INFO")
            layout.prop(context.scene.rerender, "hide_transient")
            return
        layout.prop(obj.rerender, "semantic_class")
        class_id = object_class(obj)
        if class_id is not None:
            c = class_table()[class_id] if class_id < len(class_table()) else None
            layout.label(text=f"Label {class_id}" + (" (transient)" if c is not None and c.transient else ""))


def draw_scene_semantics(layout: bpy.types.UILayout, scene: bpy.types.Scene) -> None:
    """The scene toggles, for the render panel."""
    col = layout.column(align=True)
    col.prop(scene.rerender, "hide_transient")
    col.prop(scene.rerender, "fill_labels")


CLASSES = (RerenderObjectSemantics, RERENDER_PT_object_semantics)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Object.rerender = bpy.props.PointerProperty(type=RerenderObjectSemantics)


def unregister() -> None:
    del bpy.types.Object.rerender
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

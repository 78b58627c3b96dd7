"""The Rerender UI: a panel in Render properties and one in the 3D view's sidebar (N), with their buttons.

Why drawing never touches the network: ``draw()`` runs on every redraw of the UI, so it only reads the last status
from ``connection.monitor``. The "Check" button and a slow periodic timer start checks in a thread; a fast timer
runs only while a check is in flight and redraws the panels when its result lands.
"""

from __future__ import annotations

import bpy

from . import appearance, connection, properties, semantics
from .preferences import backend_settings

PERIODIC_CHECK_S = 15.0  # background re-check of the backend while Blender's UI runs
POLL_S = 0.25  # how often the redraw timer looks for a finished check


# --- drawing ------------------------------------------------------------------------------------------------------

def draw_backend_status(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """Status line plus the buttons to check, launch and stop a backend."""
    status = connection.monitor.status
    icon = {"connected": "CHECKMARK", "checking": "SORTTIME", "error": "ERROR"}.get(status.state, "QUESTION")
    box = layout.box()
    col = box.column(align=True)
    line = status.line() if status.state != "unknown" else f"{backend_settings(context).address}: not checked yet"
    for i, chunk in enumerate(_wrap(line, 60)):
        col.label(text=chunk, icon=icon if i == 0 else "BLANK1")
    row = box.row(align=True)
    row.operator(RERENDER_OT_check_backend.bl_idname, icon="FILE_REFRESH")
    if connection.local_backend.running:
        row.operator(RERENDER_OT_stop_backend.bl_idname, icon="CANCEL")
    else:
        row.operator(RERENDER_OT_launch_backend.bl_idname, icon="PLAY")


def draw_appearance(layout: bpy.types.UILayout, scene: bpy.types.Scene) -> None:
    """Point size and the current frame's latent (each value keyable with I, like any property)."""
    settings = scene.rerender
    row = layout.row(align=True)
    row.prop(settings, "point_size_auto", text="Auto Point Size")
    sub = row.row(align=True)
    sub.active = not settings.point_size_auto
    sub.prop(settings, "point_size", text="Size")
    status = connection.monitor.status
    expected = status.latent_size if status.connected else 0
    header = layout.row()
    header.label(text=f"Appearance ({properties.latent_size(scene)} values)", icon="SHADING_RENDERED")
    if expected and expected != properties.latent_size(scene):
        header.operator(RERENDER_OT_match_latent.bl_idname, text=f"Match Model ({expected})", icon="ERROR")
    header.operator(RERENDER_OT_key_appearance.bl_idname, text="", icon="KEY_HLT")
    grid = layout.grid_flow(columns=2, even_columns=True, align=True)
    for i, item in enumerate(settings.appearance):
        grid.prop(item, "value", text=f"z{i}")
    if settings.appearance_name:
        layout.label(text=f"Look: {settings.appearance_name}")
    draw_looks(layout, scene)
    semantics.draw_scene_semantics(layout.box(), scene)


def draw_looks(layout: bpy.types.UILayout, scene: bpy.types.Scene) -> None:
    """The look gallery (searchable list with thumbnails), apply-at-frame, mix slider, photo encoding."""
    settings = scene.rerender
    box = layout.box()
    row = box.row(align=True)
    row.label(text=f"Looks ({len(settings.looks)})", icon="IMAGE_DATA")
    row.operator("rerender.fetch_gallery", text="", icon="IMPORT")
    row.operator("rerender.encode_photo", text="", icon="FILE_IMAGE")
    row.operator("rerender.remove_look", text="", icon="X")
    box.template_list("RERENDER_UL_looks", "", settings, "looks", settings, "looks_index", rows=4)
    row = box.row(align=True)
    row.operator("rerender.apply_look", text="Apply at Current Frame", icon="KEY_HLT")
    row.prop(settings, "look_interpolation", text="")
    mix = box.column(align=True)
    pair = mix.row(align=True)
    pair.prop_search(settings, "mix_a", settings, "looks", text="")
    pair.prop_search(settings, "mix_b", settings, "looks", text="")
    pair = mix.row(align=True)
    pair.prop(settings, "mix_factor", slider=True)
    pair.prop(settings, "mix_scale")
    mix.operator("rerender.mix_looks", text="Mix", icon="MOD_MASK")
    for level, message in appearance.jobs.messages[-2:]:
        box.label(text=message[:90], icon="ERROR" if level == "ERROR" else "INFO")
    for what in appearance.jobs.busy:
        box.label(text=f"{what} …", icon="SORTTIME")


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


class RERENDER_PT_render(bpy.types.Panel):
    bl_idname = "RERENDER_PT_render"
    bl_label = "Neural Rerender"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    COMPAT_ENGINES = {"RERENDER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None and context.scene.render.engine in cls.COMPAT_ENGINES

    def draw(self, context: bpy.types.Context) -> None:
        draw_backend_status(self.layout, context)
        draw_appearance(self.layout, context.scene)


class RERENDER_PT_sidebar(bpy.types.Panel):
    bl_idname = "RERENDER_PT_sidebar"
    bl_label = "Neural Rerender"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Rerender"

    def draw(self, context: bpy.types.Context) -> None:
        scene = context.scene
        if scene.render.engine != "RERENDER":
            self.layout.label(text="Render engine is not Neural Rerender", icon="INFO")
        draw_backend_status(self.layout, context)
        draw_appearance(self.layout, scene)


# --- buttons ------------------------------------------------------------------------------------------------------

class RERENDER_OT_check_backend(bpy.types.Operator):
    """Ask the backend for its status (in the background: the UI stays responsive)"""

    bl_idname = "rerender.check_backend"
    bl_label = "Check"

    def execute(self, context: bpy.types.Context) -> set[str]:
        connection.monitor.request(backend_settings(context))
        _start_redraw_timer()
        return {"FINISHED"}


class RERENDER_OT_launch_backend(bpy.types.Operator):
    """Start `rerender serve` with the Python and bundle set in the add-on preferences"""

    bl_idname = "rerender.launch_backend"
    bl_label = "Launch Local"

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = backend_settings(context)
        try:
            connection.local_backend.start(settings)
        except connection.BackendProblem as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        connection.monitor.publish(connection.BackendStatus("checking", settings.address, "starting"))
        self.report({"INFO"}, f"Backend starting at {settings.address} (log: {connection.local_backend.log_path})")
        _watch_launch(settings)
        return {"FINISHED"}


class RERENDER_OT_stop_backend(bpy.types.Operator):
    """Stop the backend this Blender started"""

    bl_idname = "rerender.stop_backend"
    bl_label = "Stop Local"

    def execute(self, context: bpy.types.Context) -> set[str]:
        connection.local_backend.stop()
        connection.engine_link.invalidate()
        connection.monitor.publish(connection.BackendStatus("error", backend_settings(context).address,
                                                            "local backend stopped"))
        _redraw()
        return {"FINISHED"}


class RERENDER_OT_match_latent(bpy.types.Operator):
    """Resize the scene's appearance latent to the size the backend's model expects"""

    bl_idname = "rerender.match_latent"
    bl_label = "Match Model"
    bl_options = {"REGISTER", "UNDO"}

    size: bpy.props.IntProperty(name="Size", default=0, min=0, max=4096,
                                description="Latent size; 0 = ask the connected backend")

    def execute(self, context: bpy.types.Context) -> set[str]:
        size = self.size or connection.monitor.status.latent_size
        if not size:
            self.report({"ERROR"}, "No backend connected: click 'Check' first, or give a size")
            return {"CANCELLED"}
        properties.match_latent_size(context.scene, size)
        return {"FINISHED"}


class RERENDER_OT_key_appearance(bpy.types.Operator):
    """Insert a keyframe on every appearance value at the current frame"""

    bl_idname = "rerender.key_appearance"
    bl_label = "Key Appearance"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        if properties.latent_size(context.scene) == 0:
            self.report({"ERROR"}, "The scene has no appearance values yet: click 'Match Model' first")
            return {"CANCELLED"}
        properties.key_latent(context.scene)
        return {"FINISHED"}


# --- timers: the only way results of background threads reach the UI --------------------------------------------

_seen_generation = -1


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type in {"PROPERTIES", "VIEW_3D", "PREFERENCES"}:
                area.tag_redraw()


def _apply_status_to_scene() -> None:
    """Give a scene without an appearance the model's latent size (main thread, via a timer)."""
    status = connection.monitor.status
    scene = getattr(bpy.context, "scene", None)
    if status.connected and status.latent_size and scene is not None and properties.latent_size(scene) == 0:
        properties.match_latent_size(scene, status.latent_size)


def _redraw_timer() -> float | None:
    global _seen_generation
    if connection.monitor.generation != _seen_generation:
        _seen_generation = connection.monitor.generation
        _apply_status_to_scene()
        _redraw()
    return POLL_S if connection.monitor.busy else None


def _start_redraw_timer() -> None:
    if not bpy.app.timers.is_registered(_redraw_timer):
        bpy.app.timers.register(_redraw_timer, first_interval=POLL_S)


def _periodic_check() -> float:
    connection.monitor.request(backend_settings())
    _start_redraw_timer()
    return PERIODIC_CHECK_S


def _watch_launch(settings: connection.BackendSettings) -> None:
    """After a launch, poll (non-blocking) until the child answers or dies; show that in the panel."""
    remaining = [connection.LocalBackend.LAUNCH_TIMEOUT]

    def tick() -> float | None:
        if not connection.local_backend.running:
            connection.monitor.publish(connection.BackendStatus(
                "error", settings.address, f"The local backend exited: {connection.local_backend.log_tail()}"))
            _redraw()
            return None
        if connection.monitor.status.connected or remaining[0] <= 0:
            return None
        remaining[0] -= 1.0
        connection.monitor.request(settings)
        _start_redraw_timer()
        return 1.0

    bpy.app.timers.register(tick, first_interval=1.0)


CLASSES = (
    RERENDER_OT_check_backend, RERENDER_OT_launch_backend, RERENDER_OT_stop_backend, RERENDER_OT_match_latent,
    RERENDER_OT_key_appearance, RERENDER_PT_render, RERENDER_PT_sidebar,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    if not bpy.app.background:  # no UI to keep up to date in background renders and tests
        bpy.app.timers.register(_periodic_check, first_interval=1.0, persistent=True)


def unregister() -> None:
    for timer in (_periodic_check, _redraw_timer):
        if bpy.app.timers.is_registered(timer):
            bpy.app.timers.unregister(timer)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

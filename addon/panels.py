"""The Rerender UI: a panel in Render properties and one in the 3D view's sidebar (N), with their buttons.

Why drawing never touches the network: ``draw()`` runs on every redraw of the UI, so it only reads the last status
from ``connection.monitor``. The "Check" button and a slow periodic timer start checks in a thread; the add-on's
job pump (``jobs.py``) runs only while a check is in flight and redraws the panels when its result lands.
"""

from __future__ import annotations

import time

import bpy

from . import appearance, connection, jobs, photo_match, properties, semantics, ui
from .preferences import backend_settings

PERIODIC_CHECK_S = 15.0  # background re-check of the backend while Blender's UI runs


# --- drawing ------------------------------------------------------------------------------------------------------

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
    """The look gallery (searchable list with thumbnails), apply-at-frame, mix slider, photo encoding and matching
    (a running match shows its progress and a Cancel button here)."""
    settings = scene.rerender
    box = layout.box()
    row = box.row(align=True)
    row.label(text=f"Looks ({len(settings.looks)})", icon="IMAGE_DATA")
    row.operator("rerender.fetch_gallery", text="", icon="IMPORT")
    row.operator("rerender.encode_photo", text="", icon="FILE_IMAGE")
    row.operator("rerender.match_photo", text="", icon="EYEDROPPER")
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
    photo_match.draw_match(box)


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
        ui.draw_backend_status(self.layout, backend_settings(context))
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
        ui.draw_backend_status(self.layout, backend_settings(context))
        draw_appearance(self.layout, scene)


# --- buttons ------------------------------------------------------------------------------------------------------

class RERENDER_OT_check_backend(bpy.types.Operator):
    """Ask the backend for its status (in the background: the UI stays responsive)"""

    bl_idname = "rerender.check_backend"
    bl_label = "Check"

    @jobs.runs_jobs_after
    def execute(self, context: bpy.types.Context) -> set[str]:
        request_check(backend_settings(context))
        return {"FINISHED"}


class RERENDER_OT_launch_backend(bpy.types.Operator):
    """Start `rerender serve` with the Python and bundle set in the add-on preferences"""

    bl_idname = "rerender.launch_backend"
    bl_label = "Launch Local"

    @jobs.runs_jobs_after
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
        ui.redraw()
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


# --- background work: status checks and launches reach the UI through the job pump ------------------------------

_seen_generation = -1


def _apply_status_to_scene() -> None:
    """Give a scene without an appearance the model's latent size (main thread, from the pump)."""
    status = connection.monitor.status
    scene = getattr(bpy.context, "scene", None)
    if status.connected and status.latent_size and scene is not None and properties.latent_size(scene) == 0:
        properties.match_latent_size(scene, status.latent_size)


def _status_watcher() -> tuple[bool, bool]:
    """The pump's view of ``connection.monitor``: (a new status arrived, a check is still in flight)."""
    global _seen_generation
    changed = connection.monitor.generation != _seen_generation
    if changed:
        _seen_generation = connection.monitor.generation
        _apply_status_to_scene()
    return changed, connection.monitor.busy


def request_check(settings: connection.BackendSettings) -> None:
    """Start a status check (unless one runs) and make sure the pump shows its result."""
    connection.monitor.request(settings)
    jobs.ensure_pump()


def _periodic_check() -> float:
    request_check(backend_settings())
    return PERIODIC_CHECK_S


launch_watch = jobs.JobRunner("launch", jobs.ONE_AT_A_TIME)


def _watch_launch(settings: connection.BackendSettings) -> None:
    """After a launch, check once a second (in a worker) until the child answers, dies or runs out of time."""
    def work() -> connection.BackendStatus:
        deadline = time.monotonic() + connection.LocalBackend.LAUNCH_TIMEOUT
        while True:
            if not connection.local_backend.running:
                return connection.BackendStatus(
                    "error", settings.address, f"The local backend exited: {connection.local_backend.log_tail()}")
            status = connection.check(settings)
            if status.connected or time.monotonic() >= deadline:
                return status
            time.sleep(1.0)

    def done(status: connection.BackendStatus) -> str:
        connection.monitor.publish(status)
        return f"local backend: {status.message}"

    launch_watch.start("watch the local backend start", work, done)


CLASSES = ui.CLASSES + (
    RERENDER_OT_check_backend, RERENDER_OT_launch_backend, RERENDER_OT_stop_backend, RERENDER_OT_match_latent,
    RERENDER_OT_key_appearance, RERENDER_PT_render, RERENDER_PT_sidebar,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    jobs.watch(_status_watcher)
    if not bpy.app.background:  # no UI to keep up to date in background renders and tests
        bpy.app.timers.register(_periodic_check, first_interval=1.0, persistent=True)


def unregister() -> None:
    jobs.unwatch(_status_watcher)
    jobs.stop_pump()
    if bpy.app.timers.is_registered(_periodic_check):
        bpy.app.timers.unregister(_periodic_check)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

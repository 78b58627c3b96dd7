"""Add-on preferences: where the backend is, how long to wait for it, and how to launch a local one.

Why preferences and not scene properties: the backend is a property of the machine (its GPU, its address), not of
the shot. A .blend file sent to a render farm must render on every worker against that worker's backend, so the
address lives in each worker's preferences, and the environment variable ``RERENDER_BACKEND`` overrides it
(Flamenco jobs set environment variables easily). The CURVE keys for a remote backend (docs/install.md, "Remote
backends with keys") sit here for the same reason, with ``RERENDER_SERVER_KEY`` / ``RERENDER_CLIENT_KEY`` as
overrides for workers whose preferences nobody edits.
"""

from __future__ import annotations

import os

import bpy

from .connection import DEFAULT_ADDRESS, BackendSettings

ADDON_ID = __package__  # "rerender.addon" in a Python install, "bl_ext.<repo>.rerender" as an extension
ADDRESS_ENV = "RERENDER_BACKEND"
SERVER_KEY_ENV = "RERENDER_SERVER_KEY"
CLIENT_KEY_ENV = "RERENDER_CLIENT_KEY"


class RerenderPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    address: bpy.props.StringProperty(
        name="Backend Address", default=DEFAULT_ADDRESS,
        description="ZeroMQ address of the Rerender backend: tcp://HOST:PORT, or ipc:///path on this machine. "
        f"The environment variable {ADDRESS_ENV} overrides it",
    )
    timeout: bpy.props.FloatProperty(
        name="Timeout", default=30.0, min=0.5, soft_max=300.0, subtype="TIME_ABSOLUTE", unit="TIME_ABSOLUTE",
        description="Seconds a render waits for one frame from the backend before it stops with an error "
        "(the first frame on a fresh GPU may need a few seconds more)",
    )
    python_executable: bpy.props.StringProperty(
        name="Backend Python", subtype="FILE_PATH", default="",
        description="Optional: a Python that has the backend installed (pip install 'rerender[backend]'); with "
        "a bundle set, the add-on can start `rerender serve` as a child process of Blender",
    )
    bundle_path: bpy.props.StringProperty(
        name="Model Bundle", subtype="DIR_PATH", default="",
        description="The model bundle folder the local backend serves (made by `rerender train` or `rerender "
        "bundle init`)",
    )
    device: bpy.props.EnumProperty(
        name="Device", default="auto", description="Where the local backend runs the networks",
        items=[("auto", "Auto", "The GPU if there is one, else the CPU"),
               ("cuda", "CUDA", "An NVIDIA GPU"), ("cpu", "CPU", "The CPU (slow, for trying things out)")],
    )
    launch_on_render: bpy.props.BoolProperty(
        name="Launch on Render", default=False,
        description="When a render finds no backend at the address, start the local backend and wait for it",
    )
    server_key: bpy.props.StringProperty(
        name="Server Public Key", default="",
        description="For a backend started with CURVE keys: its public key (the 40 characters `rerender keys show "
        f"server.key` prints) or the path of its server.key file. Empty: no encryption. {SERVER_KEY_ENV} overrides it",
    )
    client_key_file: bpy.props.StringProperty(
        name="Client Key File", subtype="FILE_PATH", default="",
        description="This machine's private key file (NAME.key_secret from `rerender keys create NAME`); the "
        f"backend must list NAME.key among its allowed clients. {CLIENT_KEY_ENV} overrides it",
    )

    def draw(self, context: bpy.types.Context) -> None:
        from .ui import draw_backend_status  # the UI leaf (it imports no other UI module)

        layout = self.layout
        col = layout.column()
        col.prop(self, "address")
        if os.environ.get(ADDRESS_ENV):
            col.label(text=f"Overridden by {ADDRESS_ENV}={os.environ[ADDRESS_ENV]}", icon="INFO")
        col.prop(self, "timeout")
        box = layout.box()
        box.label(text="Local backend (optional)")
        box.prop(self, "python_executable")
        box.prop(self, "bundle_path")
        box.prop(self, "device")
        box.prop(self, "launch_on_render")
        keys = layout.box()
        keys.label(text="Remote backend keys (CURVE, optional)")
        keys.prop(self, "server_key")
        keys.prop(self, "client_key_file")
        for name in (SERVER_KEY_ENV, CLIENT_KEY_ENV):
            if os.environ.get(name):
                keys.label(text=f"Overridden by {name}", icon="INFO")
        draw_backend_status(layout, backend_settings(context))


def backend_settings(context: bpy.types.Context | None = None) -> BackendSettings:
    """The effective backend settings: the preferences if the add-on is enabled as an add-on, else defaults.

    Registering the add-on by calling ``register()`` directly (scripts, tests) gives no preferences entry in
    Blender; then the defaults apply, still overridden by ``RERENDER_BACKEND``.
    """
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    prefs = addon.preferences if addon is not None else None
    if prefs is None:
        settings = BackendSettings()
    else:
        settings = BackendSettings(
            address=prefs.address.strip() or DEFAULT_ADDRESS,
            timeout=float(prefs.timeout),
            python_executable=bpy.path.abspath(prefs.python_executable) if prefs.python_executable else "",
            bundle_path=bpy.path.abspath(prefs.bundle_path) if prefs.bundle_path else "",
            device=prefs.device,
            launch_on_render=bool(prefs.launch_on_render),
            server_key=prefs.server_key.strip(),
            client_key_file=bpy.path.abspath(prefs.client_key_file) if prefs.client_key_file.strip() else "",
        )
    overrides = {field: os.environ.get(name, "").strip()
                 for field, name in (("address", ADDRESS_ENV), ("server_key", SERVER_KEY_ENV),
                                     ("client_key_file", CLIENT_KEY_ENV))}
    return settings.replace(**{field: value for field, value in overrides.items() if value})


def preferences(context: bpy.types.Context | None = None) -> RerenderPreferences | None:
    """The add-on's preferences object, or None when it was registered without Blender's add-on system."""
    addon = (context or bpy.context).preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


CLASSES = (RerenderPreferences,)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

"""The add-on's UI leaf: redrawing, the backend status box, the look list. Panels, preferences and the job pump
import it; it imports none of them (operators are named by their ``bl_idname`` string), so the UI has no cycles.

Why drawing never touches the network: ``draw()`` runs on every redraw of the UI, so it only reads the last status
from ``connection.monitor``; checks run as background jobs (``jobs.py``).
"""

from __future__ import annotations

from typing import Any

import bpy

from . import connection, jobs

REDRAWN_AREAS = {"PROPERTIES", "VIEW_3D", "PREFERENCES"}


def redraw() -> None:
    """Tag every area that shows Rerender UI for a redraw (main thread only)."""
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type in REDRAWN_AREAS:
                area.tag_redraw()


jobs.on_change(redraw)  # the job pump redraws through this module, so jobs.py needs no UI import


def wrap(text: str, width: int) -> list[str]:
    """``text`` broken into lines of at most ``width`` characters at spaces (labels do not wrap by themselves)."""
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


def draw_backend_status(layout: bpy.types.UILayout, settings: connection.BackendSettings) -> None:
    """Status line plus the buttons to check, launch and stop a backend (the operators live in panels.py)."""
    status = connection.monitor.status
    icon = {"connected": "CHECKMARK", "checking": "SORTTIME", "error": "ERROR"}.get(status.state, "QUESTION")
    box = layout.box()
    col = box.column(align=True)
    line = status.line() if status.state != "unknown" else f"{settings.address}: not checked yet"
    for i, chunk in enumerate(wrap(line, 60)):
        col.label(text=chunk, icon=icon if i == 0 else "BLANK1")
    row = box.row(align=True)
    row.operator("rerender.check_backend", icon="FILE_REFRESH")
    if connection.local_backend.running:
        row.operator("rerender.stop_backend", icon="CANCEL")
    else:
        row.operator("rerender.launch_backend", icon="PLAY")


def look_icon(look: Any) -> int:
    """Icon id of a look's thumbnail (0 when it has none, or previews are unavailable, as in background mode)."""
    image = bpy.data.images.get(look.thumbnail) if look.thumbnail else None
    if image is None or bpy.app.background:
        return 0
    image.preview_ensure()
    return image.preview.icon_id


class RERENDER_UL_looks(bpy.types.UIList):
    """The look list: thumbnail, name, source; searchable with the list's filter field (by name)."""

    bl_idname = "RERENDER_UL_looks"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):  # noqa: D102
        icon_value = look_icon(item)
        row = layout.row(align=True)
        if icon_value:
            row.label(text="", icon_value=icon_value)
        row.prop(item, "name", text="", emboss=False)
        row.label(text=item.source.title())
        op = row.operator("rerender.apply_look", text="", icon="KEY_HLT")
        op.name = item.name


CLASSES = (RERENDER_UL_looks,)

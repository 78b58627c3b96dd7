"""Synthetic "in the wild" photo collections of a procedural landmark, with full ground truth (docs/synthetic.md).

``generate_collection`` renders tourist photos (many viewpoints, lenses, lights, weather, people and cars) with
their cameras, appearances, transients and exact segmentations; ``render_view`` re-renders any camera under any
appearance from that ground truth (appearance-transfer ground truth for the evaluation); ``camera_path`` gives
the demo a smooth camera among the photo viewpoints (``animation.animate_camera`` keys it on a Blender camera). Importing this package does not import bpy; rendering does.
See docs/synthetic.md.
"""

from .collection import CollectionInfo, generate_collection, load_collection, plan_collection, render_view
from .geometry import blender_matrix_world, camera_path, make_camera, project, similarity_residuals
from .landmark import key_points
from .spec import PhotoConditions, PhotoCamera, RenderSettings, SceneSpec, Transient

__all__ = ["PhotoConditions", "CollectionInfo", "PhotoCamera", "RenderSettings", "SceneSpec", "Transient",
           "blender_matrix_world", "camera_path", "generate_collection", "key_points", "load_collection",
           "make_camera", "plan_collection", "project", "render_view", "similarity_residuals"]

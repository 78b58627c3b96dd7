"""Labels onto dense points: each point takes the majority label of the photo pixels it is *visible* at."""

from __future__ import annotations

import numpy as np

from rerender.addon.cameras import ColmapCamera
from rerender.bridge.classes import UNKNOWN
from rerender.training.point_labels import LabelledView, label_dense_points

BUILDING, SKY, PERSON = 2, 10, 11


def view(center_x: float, seg: np.ndarray) -> LabelledView:
    """A camera at (center_x, 0, 0) looking down +z, 100 x 100 px, f = 100."""
    camera = ColmapCamera(R=np.eye(3), t=np.array([-center_x, 0.0, 0.0]), fx=100, fy=100, cx=50, cy=50,
                          width=100, height=100)
    return LabelledView(camera, seg)


def test_majority_of_visible_views_and_occluded_points_get_no_vote():
    left_building = np.full((100, 100), SKY, np.uint8)
    left_building[:, :60] = BUILDING
    all_person = np.full((100, 100), PERSON, np.uint8)
    xyz = np.array([
        [0.0, 0.0, 5.0],   # A: centre of view 1 (building side)
        [0.0, 0.0, 10.0],  # B: right behind A in view 1 -> occluded there
        [1.0, 0.0, 5.0],   # C: u = 70 in view 1 (sky side)
        [0.0, 0.0, -5.0],  # D: behind every camera
    ])
    views = [view(0.0, left_building), view(0.0, left_building), view(0.0, all_person)]
    labels = label_dense_points(xyz, views, num_classes=19)
    assert labels[0] == BUILDING            # 2 building votes beat 1 person vote
    assert labels[1] == UNKNOWN             # hidden by A in every view: no vote at all
    assert labels[2] == SKY
    assert labels[3] == UNKNOWN


def test_a_view_from_elsewhere_sees_the_point_an_occluder_hides():
    building = np.full((100, 100), BUILDING, np.uint8)
    xyz = np.array([[0.0, 0.0, 5.0], [0.0, 0.0, 10.0]])
    # From x = 2.5 the two points project to different pixels (u = 0 and 25): both visible.
    labels = label_dense_points(xyz, [view(0.0, building), view(2.5, building)], num_classes=19)
    assert list(labels) == [BUILDING, BUILDING]

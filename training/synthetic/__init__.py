"""Synthetic "in the wild" photo collections of a procedural landmark, with full ground truth (issue 7)."""

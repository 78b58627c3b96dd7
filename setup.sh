#!/usr/bin/env bash
# Sets up Rerender in a virtual environment at .venv (idempotent; safe to run again).
#   ./setup.sh            the full stack: backend, training, Blender (bpy), tests
#   ./setup.sh backend    only what a GPU serving machine needs (no Blender, no pycolmap)
#   ./setup.sh lanes      the full stack, plus one venv per other supported Blender (packaging/blender_lanes.sh)
# torch is pinned first so that pip does not pull another build through a loose range: on a Linux machine with an
# NVIDIA GPU the registry's torch 2.13.0 is a CUDA build; where a local CPU wheel is configured, that one is used.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Rerender needs Python 3.11 (the Python of Blender 5.0 and the bpy wheel); set PYTHON=/path/to/python3.11"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip setuptools wheel
"${PIP[@]}" "torch==${RERENDER_TORCH_VERSION:-2.13.0}"
case "${1:-full}" in
  backend) "${PIP[@]}" -e ".[backend]" ;;
  full)    "${PIP[@]}" -e ".[dev]" ;;
  lanes)   "${PIP[@]}" -e ".[dev]" && packaging/blender_lanes.sh setup ;;
  *) echo "usage: ./setup.sh [full|backend|lanes]" >&2; exit 2 ;;
esac
echo "Rerender is installed in .venv — try: .venv/bin/rerender --help"

#!/usr/bin/env bash
# Test lanes: one virtual environment per supported Blender (the bpy wheel of that release in its own Python), so the
# add-on's Blender-side tests run on every Blender an artist uses, while the backend is served from the project's
# main .venv (as in a real deployment, Blender's Python is not the backend's).
#
#   packaging/blender_lanes.sh setup [LANE...]   create/refresh .venv-blender-LANE (default: all lanes)
#   packaging/blender_lanes.sh test  [LANE...]   run the lane test set (pytest -m lane) in each lane, in parallel
#   packaging/blender_lanes.sh list              the lanes and their bpy/Python versions
#
# Lanes: 4.5 (bpy 4.5.15, Python 3.11), 5.2 (bpy 5.2.3, Python 3.13), 5.3 (bpy 5.3.0, Python 3.13). Blender 5.0.1 is
# the main .venv itself and runs the whole suite there. Each lane env holds bpy, pytest and the add-on's own
# dependencies (pyzmq, msgpack, pycolmap) plus the repository without dependencies (no torch).
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A BPY=([4.5]=4.5.15 [5.2]=5.2.3 [5.3]=5.3.0)
declare -A PY=([4.5]=3.11 [5.2]=3.13 [5.3]=3.13)
ALL_LANES=(4.5 5.2 5.3)

find_python() {  # python3.X on PATH, else the newest pyenv build of it
  local want=$1 candidate
  for candidate in "python$want" "$HOME"/.pyenv/versions/"$want".*/bin/python"$want"; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$want'.split('.')))" 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  echo "Python $want not found (install it, e.g. 'pyenv install $want', or put python$want on PATH)" >&2
  return 1
}

setup_lane() {
  local lane=$1 venv=".venv-blender-$1" python
  python=$(find_python "${PY[$lane]}")
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
  "${pip[@]}" --upgrade pip
  "${pip[@]}" "bpy==${BPY[$lane]}" "pyzmq==27.3.0" "msgpack==1.2.4" "pycolmap==4.2.1" "pytest>=8" "pytest-timeout>=2.3" "pillow>=10"
  "${pip[@]}" --no-deps -e .
  echo "lane $lane: $venv (bpy ${BPY[$lane]}, Python ${PY[$lane]})"
}

test_lane() {  # one lane's tests; output in .lanes/LANE.log
  local lane=$1 venv=".venv-blender-$1"
  [ -x "$venv/bin/python" ] || { echo "lane $lane is not set up: packaging/blender_lanes.sh setup $lane" >&2; return 1; }
  mkdir -p .lanes
  RERENDER_BACKEND_PYTHON="$PWD/.venv/bin/python" RERENDER_LANE="$lane" \
    "$venv/bin/python" -m pytest -m lane -p no:cacheprovider -q "${PYTEST_ARGS[@]}" >".lanes/$lane.log" 2>&1
}

cmd=${1:-list}; shift || true
lanes=("$@"); [ ${#lanes[@]} -gt 0 ] || lanes=("${ALL_LANES[@]}")
for lane in "${lanes[@]}"; do
  [ -n "${BPY[$lane]:-}" ] || { echo "unknown lane '$lane'; lanes: ${ALL_LANES[*]}" >&2; exit 2; }
done
PYTEST_ARGS=()
[ -n "${LANE_PYTEST_ARGS:-}" ] && read -r -a PYTEST_ARGS <<<"$LANE_PYTEST_ARGS"
case "$cmd" in
  list) for lane in "${ALL_LANES[@]}"; do echo "$lane  bpy ${BPY[$lane]}  Python ${PY[$lane]}  .venv-blender-$lane"; done ;;
  setup) for lane in "${lanes[@]}"; do setup_lane "$lane"; done ;;
  test)
    [ -x .venv/bin/python ] || { echo "the main .venv (the backend) is missing: ./setup.sh" >&2; exit 1; }
    declare -A pids
    for lane in "${lanes[@]}"; do test_lane "$lane" & pids[$lane]=$!; done
    rc=0
    for lane in "${lanes[@]}"; do
      if wait "${pids[$lane]}"; then status=passed; else status=FAILED; rc=1; fi
      echo "lane $lane (bpy ${BPY[$lane]}): $status — $(tail -n 1 ".lanes/$lane.log")"
    done
    exit "$rc" ;;
  *) echo "usage: packaging/blender_lanes.sh [list|setup|test] [LANE...]" >&2; exit 2 ;;
esac

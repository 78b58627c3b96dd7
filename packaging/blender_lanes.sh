#!/usr/bin/env bash
# Test lanes: one virtual environment per supported Blender (the bpy wheel of that release in its own Python), so the
# add-on's Blender-side tests run on every Blender an artist uses, while the backend is served from the project's
# main .venv (as in a real deployment, Blender's Python is not the backend's).
#
#   packaging/blender_lanes.sh setup [LANE...]   create/refresh .venv-blender-LANE (default: all lanes)
#   packaging/blender_lanes.sh test  [LANE...]   run the lane test set (pytest -m lane) in each lane, in parallel
#                                                (LANE_PYTEST_ARGS="-k deep_buffer" narrows it; logs in .lanes/)
#   packaging/blender_lanes.sh list              the lanes and their bpy/Python versions
#
# Lanes: 4.5 (bpy 4.5.15, Python 3.11), 5.2 (bpy 5.2.3, Python 3.13), 5.3 (bpy 5.3.0, Python 3.13). Blender 5.0.1 is
# the main .venv itself and runs the whole suite there. Each lane env holds bpy, pytest and the add-on's own
# dependencies (pyzmq, msgpack, pycolmap) plus the repository without dependencies (no torch).
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A BPY=([4.5]=4.5.15 [5.2]=5.2.3 [5.3]=5.3.0)
# The Blender-side test files; within them only the tests marked `lane` run (the main suite runs all of them on 5.0.1
# and every Blender-free test once).
LANE_TESTS=(tests/test_blender_versions.py tests/test_deep_buffer.py tests/test_engine.py tests/test_appearance.py
            tests/test_semantics.py tests/test_batch_render.py tests/test_packaging.py tests/test_match_photo_lanes.py)
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

test_lane() {  # one lane's tests; output in .lanes/LANE.log, measured numbers in .lanes/report/
  local lane=$1 venv=".venv-blender-$1"
  [ -x "$venv/bin/python" ] || { echo "lane $lane is not set up: packaging/blender_lanes.sh setup $lane" >&2; return 1; }
  local started=$SECONDS rc=0
  # Warnings as errors: a DeprecationWarning raised by the add-on fails the lane (5.3 deprecates APIs 6.0 drops).
  # /usr/bin/time notes the CPU seconds (user + system, children included) in .lanes/LANE.cpu.
  RERENDER_BACKEND_PYTHON="$PWD/.venv/bin/python" RERENDER_EXTENSION_DIST="$PWD/.lanes/dist" \
    RERENDER_LANE_REPORT_DIR="$PWD/.lanes/report" \
    /usr/bin/time -o ".lanes/$lane.cpu" -f "%U %S" \
    "$venv/bin/python" -m pytest -m lane -p no:cacheprovider -q --durations=8 -W error::DeprecationWarning \
    "${LANE_TESTS[@]}" "${PYTEST_ARGS[@]}" >".lanes/$lane.log" 2>&1 || rc=$?
  echo "$((SECONDS - started))" >".lanes/$lane.seconds"
  return "$rc"
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
    mkdir -p .lanes
    rm -rf .lanes/report
    # The extension zips, built once with the main environment's Blender tool; every lane installs these.
    .venv/bin/python packaging/build_extension.py --out .lanes/dist --wheel-cache .lanes/wheels >.lanes/build.log 2>&1 ||
      { echo "building the extension failed:"; tail -n 20 .lanes/build.log; exit 1; } >&2
    declare -A pids
    for lane in "${lanes[@]}"; do test_lane "$lane" & pids[$lane]=$!; done
    rc=0
    for lane in "${lanes[@]}"; do
      if wait "${pids[$lane]}"; then status=passed; else status=FAILED; rc=1; fi
      cpu=$(tail -n 1 ".lanes/$lane.cpu" 2>/dev/null | awk '{printf "%.0f", $1 + $2}')
      echo "lane $lane (bpy ${BPY[$lane]}): $status in $(cat ".lanes/$lane.seconds") s ($cpu CPU s) — $(grep -E "passed|failed|error" ".lanes/$lane.log" | tail -n 1)"
    done
    exit "$rc" ;;
  *) echo "usage: packaging/blender_lanes.sh [list|setup|test] [LANE...]" >&2; exit 2 ;;
esac

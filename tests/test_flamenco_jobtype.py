"""The Flamenco job type compiles frame ranges into Blender render tasks that carry the backend address.

Flamenco runs job types in its embedded JavaScript engine with `author`, `frameChunker` and `path` provided; node
runs the same script here with small stand-ins for those three so the task list it builds can be checked."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

JOB_TYPE = Path(__file__).resolve().parents[1] / "packaging" / "flamenco" / "rerender_render.js"
HARNESS = r"""
const fs = require("fs");
const path = require("path");
function frameChunker(frames, size) {            // Flamenco's contract: "1-10" -> ["1-4", "5-8", "9-10"]
  const [a, b] = frames.split("-").map(Number); const out = [];
  for (let s = a; s <= b; s += size) out.push(`${s}-${Math.min(s + size - 1, b)}`);
  return out;
}
const tasks = [];
const author = {
  Task: (name, type) => ({ name, type, commands: [], addCommand(c) { this.commands.push(c); } }),
  Command: (type, params) => ({ type, params }),
};
eval(fs.readFileSync(process.argv[2], "utf8") + "\n;globalThis.JOB_TYPE_ = JOB_TYPE;");
const job = { name: "shot010", settings: JSON.parse(process.argv[3]), addTask: (t) => tasks.push(t) };
try { compileJob(job); console.log(JSON.stringify({ tasks, settings: JOB_TYPE_.settings.map((s) => s.key) })); }
catch (e) { console.log(JSON.stringify({ error: String(e) })); }
"""


def compile_job(tmp_path: Path, **settings) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Flamenco job type (JavaScript) cannot be run here")
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    base = dict(frames="1-10", chunk_size=4, backend_address="tcp://gpu-07:5555", render_output_root="/farm/out",
                blendfile="/farm/shots/shot010.blend", format="OPEN_EXR_MULTILAYER")
    proc = subprocess.run([node, str(harness), str(JOB_TYPE), json.dumps({**base, **settings})],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_chunks_become_blender_tasks_with_the_backend_address(tmp_path: Path) -> None:
    out = compile_job(tmp_path)
    assert "backend_address" in out["settings"]
    assert [t["name"] for t in out["tasks"]] == ["render-1-4", "render-5-8", "render-9-10"]
    cmd = out["tasks"][0]["commands"][0]
    assert cmd["type"] == "blender-render" and cmd["params"]["blendfile"] == "/farm/shots/shot010.blend"
    args = cmd["params"]["args"]
    assert args[args.index("--render-frame") + 1] == "1..4"
    assert args[args.index("--python-expr") + 1] == "import os; os.environ['RERENDER_BACKEND'] = \"tcp://gpu-07:5555\""
    assert args.index("--python-expr") < args.index("--render-frame"), "the address must be set before rendering"
    assert args[args.index("--render-output") + 1] == "/farm/out/shot010/######"


def test_a_bad_backend_address_is_refused_at_submission(tmp_path: Path) -> None:
    out = compile_job(tmp_path, backend_address="gpu-07:5555")
    assert "tcp://HOST:PORT" in out["error"]

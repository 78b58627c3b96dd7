"""Builds the installable Blender extension: the add-on, the vendored bridge, and unmodified PyPI wheels.

Why this exists: artists install add-ons from a zip in Blender's preferences and will never pip-install pyzmq into
Blender's Python. Blender 4.2+ extensions carry their dependencies as wheels listed in `blender_manifest.toml`;
Blender installs them into its own site-packages on install, "only the compatible wheels". We download the wheels
for every Python the supported Blenders use (3.11 for 4.5 LTS and 5.0, 3.13 for 5.1 and later; Blender derives the
extension's Python versions from the wheel tags) for each platform, stage the add-on with the bridge vendored inside it (the add-on imports `rerender.bridge` when the
full project is installed, else its vendored copy), and let Blender's own extension tool (`blender_ext.py`, shipped
inside the bpy wheel and Blender) build one zip per platform and validate it, so what we ship passes exactly the
checks Blender applies on install. ``--repo-index`` also writes a Blender extension repository (the zips and the
``index.json`` Blender's tool generates) that studios and farms install and upgrade from.

    .venv/bin/python packaging/build_extension.py --out dist [--repo-index]      (see docs/install.md)

(packaging/ has no __init__.py on purpose: a package named `packaging` would shadow the library pip uses.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Blender 4.5 LTS and 5.0 ship CPython 3.11, Blender 5.1 - 5.3 CPython 3.13.
PYTHON_VERSIONS = ("3.11", "3.13")
# Blender's platform names -> pip platform tags for which the dependency wheels exist. No macOS x64 zip: pycolmap
# 4.2 publishes no x86_64 macOS wheels (its last ones are 3.12.x, for other Pythons).
PLATFORMS: dict[str, str] = {
    "linux-x64": "manylinux_2_28_x86_64",
    "windows-x64": "win_amd64",
    "macos-arm64": "macosx_14_0_arm64",
}
# What the add-on imports besides bpy/numpy (Blender ships numpy): the wire stack, and pycolmap for COLMAP import.
REQUIREMENTS = ("pyzmq==27.3.0", "msgpack==1.2.4", "pycolmap==4.2.1")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".pytest_cache")


class PackagingError(RuntimeError):
    """The extension could not be built; the message says which step failed and what to do."""


@dataclass
class BuiltExtension:
    platform: str
    path: Path
    size_bytes: int


def blender_ext_tool() -> Path:
    """Blender's own extension command-line tool, as shipped in the bpy wheel (and in every Blender 4.2+)."""
    try:
        import bpy  # noqa: F401  (only to locate the bundled scripts; nothing is rendered)
    except ImportError as exc:
        raise PackagingError("the bpy wheel is needed to build/validate the extension: pip install bpy==5.0.1") from exc
    import bpy

    tool = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    if not tool.is_file():
        raise PackagingError(f"Blender's extension tool not found at {tool}")
    return tool


def download_wheels(platform_tag: str, dest: Path, requirements: tuple[str, ...] = REQUIREMENTS,
                    python_version: str = PYTHON_VERSIONS[0]) -> list[Path]:
    """Unmodified binary wheels from PyPI for one Python on one platform (no dependency resolution: the listed
    packages have no runtime dependencies of their own that Blender lacks). pip prefers pyzmq's stable-ABI
    (cp312-abi3) wheel wherever it serves, so Python 3.13 gets that one."""
    dest = dest / f"py{python_version}"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--only-binary=:all:",
           "--no-deps", "--python-version", python_version, "--implementation", "cp", "--platform", platform_tag,
           "-d", str(dest), *requirements]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PackagingError(f"pip could not download wheels for Python {python_version} on {platform_tag}: "
                             f"{result.stderr.strip()[-800:]}")
    wheels = sorted(dest.glob("*.whl"))
    names = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels}
    missing = [r.split("==")[0] for r in requirements if r.split("==")[0].lower() not in names]
    if missing:
        raise PackagingError(f"no {platform_tag} wheel for Python {python_version} of {', '.join(missing)} on the "
                             "package index")
    return wheels


def stage_addon(stage: Path) -> None:
    """Copy the add-on and vendor the bridge into it (relative imports only, so it works under bl_ext.*)."""
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(ROOT / "addon", stage, ignore=IGNORED)
    vendor = stage / "vendor"
    vendor.mkdir(exist_ok=True)
    (vendor / "__init__.py").write_text('"""Copies of project packages the extension needs (the bridge)."""\n')
    shutil.copytree(ROOT / "bridge", vendor / "bridge", ignore=IGNORED)


def write_manifest(stage: Path, wheels: list[str], platforms: list[str]) -> dict:
    """Add `wheels` and `platforms` to the add-on's manifest (top-level keys must precede the first table)."""
    path = stage / "blender_manifest.toml"
    text = path.read_text()
    manifest = tomllib.loads(text)
    for key in ("wheels", "platforms"):
        if manifest.get(key):
            raise PackagingError(f"addon/blender_manifest.toml must leave {key!r} empty: the packager fills it in")
    extra = f"wheels = {json.dumps(wheels)}\nplatforms = {json.dumps(platforms)}\n"
    # Drop the source manifest's empty placeholders; the filled-in keys go before the first table.
    lines = [line for line in text.splitlines(keepends=True)
             if not line.replace(" ", "").startswith(("wheels=[]", "platforms=[]"))]
    first_table = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[")), len(lines))
    lines.insert(first_table, extra + "\n")
    path.write_text("".join(lines))
    return tomllib.loads(path.read_text())


def run_tool(args: list[str], tool: Path | None = None, python: str | None = None) -> str:
    """Run Blender's extension tool (by default the one in this Python's bpy) with ``args``."""
    result = subprocess.run([python or sys.executable, str(tool or blender_ext_tool()), *args], capture_output=True,
                            text=True)
    out = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or "error" in out.lower().split("\n")[-1]:
        raise PackagingError(f"blender_ext {args[0]} failed: {out[-1500:]}")
    return out


def build(out: Path, platforms: list[str] | None = None, *, work: Path | None = None,
          wheel_cache: Path | None = None) -> list[BuiltExtension]:
    """Build and validate one extension zip per platform into `out`; returns what was written."""
    platforms = platforms or list(PLATFORMS)
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown:
        raise PackagingError(f"unknown platform(s) {unknown}; choose from {list(PLATFORMS)}")
    work = work or out / "_build"
    wheel_cache = wheel_cache or work / "wheels"
    stage = work / "rerender"
    stage_addon(stage)
    (stage / "wheels").mkdir()
    wheel_names = []
    for platform in platforms:
        for python_version in PYTHON_VERSIONS:
            for wheel in download_wheels(PLATFORMS[platform], wheel_cache / platform, python_version=python_version):
                shutil.copy2(wheel, stage / "wheels" / wheel.name)
                wheel_names.append(f"./wheels/{wheel.name}")
    manifest = write_manifest(stage, sorted(set(wheel_names)), platforms)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{manifest['id']}-*.zip"):
        old.unlink()
    if len(platforms) > 1:
        target = ["--output-dir", str(out), "--split-platforms"]
    else:  # same file name as a split build would give
        target = ["--output-filepath", str(out / f"{manifest['id']}-{manifest['version']}-{platforms[0].replace('-', '_')}.zip")]
    run_tool(["build", "--source-dir", str(stage), *target])
    built = []
    for zip_path in sorted(out.glob(f"{manifest['id']}-*.zip")):
        run_tool(["validate", str(zip_path)])
        platform = next((p for p in platforms if p.replace("-", "_") in zip_path.name), platforms[0])
        built.append(BuiltExtension(platform, zip_path, zip_path.stat().st_size))
    if not built:
        raise PackagingError(f"Blender's build step wrote no zip into {out}")
    return built


def write_repository(repo: Path, zips: list[Path], tool: Path | None = None, python: str | None = None) -> Path:
    """A Blender extension repository in folder ``repo``: the zips and the ``index.json`` Blender's own tool
    generates from them (``blender --command extension server-generate`` does the same). Workers add it with
    ``blender --command extension repo-add --url file:///REPO/index.json`` (or the folder served over HTTP)."""
    repo.mkdir(parents=True, exist_ok=True)
    for old in repo.glob("*.zip"):
        old.unlink()
    for path in zips:
        shutil.copy2(path, repo / path.name)
    run_tool(["server-generate", "--repo-dir", str(repo)], tool, python)
    index = repo / "index.json"
    if not index.is_file():
        raise PackagingError(f"Blender's server-generate wrote no index.json into {repo}")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where the zips go (default: dist/)")
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                        help="build only for this platform (repeatable; default: all)")
    parser.add_argument("--wheel-cache", type=Path, help="reuse downloaded wheels from this folder")
    parser.add_argument("--repo-index", type=Path, nargs="?", const=True,
                        help="also write an extension repository (zips + index.json) into this folder "
                             "(default: OUT/repository)")
    args = parser.parse_args(argv)
    try:
        built = build(args.out, args.platform, wheel_cache=args.wheel_cache)
        if args.repo_index:
            repo = args.out / "repository" if args.repo_index is True else args.repo_index
            index = write_repository(repo, [b.path for b in built])
            print(f"repository   {index}")
    except PackagingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for b in built:
        print(f"{b.platform:12s} {b.path}  {b.size_bytes / 1e6:.1f} MB  (validated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

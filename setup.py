"""Maps the top-level folders onto one import namespace, ``rerender.*`` (docs/design.md §2).

The folders show the architecture (bridge/, backend/, training/, addon/), while the installed names cannot
collide with anything else in a shared site-packages. setup.py only exists because the package list must be
computed: every sub-package of every mapped folder is found here, so nobody edits a list by hand.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
FOLDERS = {
    "rerender": "cli",
    "rerender.bridge": "bridge",
    "rerender.backend": "backend",
    "rerender.training": "training",
    "rerender.addon": "addon",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for name, folder in FOLDERS.items():
        package_dir[name] = folder
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            packages.append(".".join((name, *rel.parts)) if rel.parts else name)
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"rerender.addon": ["blender_manifest.toml", "icons/*"], "rerender.bridge": ["*.md"]},
    include_package_data=True,
)

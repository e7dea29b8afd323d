"""The manifests committed under k8s/manifests, and the command that regenerates them.

    .venv/bin/python -m k8s.committed
"""

from __future__ import annotations

from pathlib import Path

from .render import render, write_tree
from .settings import CPU_IMAGE, Settings
from .sources import load_plan_or_spec

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = Path(__file__).resolve().parent / "manifests"
REGENERATE = ".venv/bin/python -m k8s.committed"
TINY_MODEL = "/models/tiny-paligemma"

# overlay -> (cluster spec relative to the repository, settings)
SOURCES = {
    "prod": ("examples/cluster.yaml", Settings()),
    "dev": ("paliserve/defaults/local-cpu.yaml", Settings(image=CPU_IMAGE, tiny_model=TINY_MODEL)),
}


def render_committed() -> dict[str, str]:
    files: dict[str, str] = {}
    for overlay, (spec, settings) in SOURCES.items():
        plan = load_plan_or_spec(REPO / spec, tiny_model=settings.tiny_model)
        files |= render(plan, overlay, settings, source=spec)
    return files


def main() -> None:
    files = render_committed()
    for stale in MANIFESTS.rglob("*"):
        if stale.is_file() and str(stale.relative_to(MANIFESTS)) not in files:
            stale.unlink()
    for path in write_tree(files, MANIFESTS):
        print(path.relative_to(REPO))


if __name__ == "__main__":
    main()

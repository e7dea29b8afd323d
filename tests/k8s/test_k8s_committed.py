"""The committed manifests are what the renderer makes of the committed specs today."""

from __future__ import annotations

from k8s.committed import MANIFESTS, REGENERATE, render_committed


def test_committed_manifests_are_current():
    expected = render_committed()
    on_disk = {str(p.relative_to(MANIFESTS)): p.read_text() for p in MANIFESTS.rglob("*") if p.is_file()}
    stale = sorted(path for path in expected.keys() | on_disk.keys() if expected.get(path) != on_disk.get(path))
    assert not stale, f"k8s/manifests is stale ({', '.join(stale)}): regenerate with `{REGENERATE}`"

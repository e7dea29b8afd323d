"""Kubernetes manifests for a plan: KubeRay RayService, monitoring and policy, validated offline.

- `k8s.render.render(plan, overlay, settings)` -> {relative path: text}; `write_tree(files, dir)`;
- `k8s.validate.validate_tree(root)` checks a rendered tree without a cluster;
- `k8s.cli.register(app)` adds `paliserve k8s`; `python -m k8s.committed` re-renders k8s/manifests.
"""

"""Kubernetes manifests for a plan: KubeRay RayService, monitoring and policy, validated offline.

- `k8s.render.render_tree(plan, out_dir, overlay, settings)` writes a kustomize tree;
- `k8s.validate.validate_tree(root)` checks it without a cluster;
- `k8s.cli.register(app)` adds `paliserve k8s`.
"""

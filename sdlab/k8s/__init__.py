"""Kubernetes manifests for sdlab on EKS: render them from `sdlab.yaml`, write one file per object, validate offline.

`render.render_stack(settings, ctx)` builds every object; `files.write_manifests(objects, out_dir)` writes them;
`validate.validate_all(objects)` checks them against the real KEDA/Karpenter CRDs and Kubernetes' own OpenAPI schemas.
See docs/kubernetes.md for what is rendered and why each setting is what it is.
"""

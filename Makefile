# The two set-up commands of README.md. Both create or reuse .venv (scripts/bootstrap.sh).
.PHONY: up test bootstrap

bootstrap:
	@scripts/bootstrap.sh

up: bootstrap
	.venv/bin/paliserve up

test: bootstrap
	VLLM_HOST_IP=127.0.0.1 .venv/bin/python -m pytest -q

# The container images the Kubernetes manifests name (images/; podman, buildah or docker).
.PHONY: images
images:
	scripts/build_images.sh

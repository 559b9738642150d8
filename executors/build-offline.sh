#!/usr/bin/env bash
# Build the CPU executor image where no registry can be reached (as on our development machines): a stand-in
# for python:3.11-slim made by debootstrap from Debian's packages, the wheels of requirements.lock downloaded
# beforehand and lent to the build read-only, no network inside the build.
# Usage: bash executors/build-offline.sh [TAG]     (root, podman; prints the image reference)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tag="${1:-localhost/ymir/detector:cpu}"
work="${YMIR_BUILD_DIR:-/tmp/ymir-executor-build}"
base="localhost/ymir-base/python:3.11-bookworm"
podman="${PODMAN:-podman}"
mkdir -p "$work"
if ! "$podman" image exists "$base"; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  rm -rf "$work/root"
  debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates bookworm "$work/root" \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log"
  rm -f "$work"/root/usr/lib/python3*/EXTERNALLY-MANAGED  # an image's own Python, as in python:3.11-slim
  rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/*
  tar -C "$work/root" -cf "$work/base.tar" .
  "$podman" import --quiet --change 'CMD ["python3"]' "$work/base.tar" "$base" >/dev/null
  rm -rf "$work/root" "$work/base.tar"
fi
python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: --dest "$work/wheels" \
  -r "$here/requirements.lock"
"$podman" build --quiet --network none --volume "$work/wheels:/wheels:ro" --build-arg BASE="$base" \
  --build-arg PIP_SOURCE="--no-index --find-links /wheels" -f "$here/Dockerfile.cpu" -t "$tag" "$here" >/dev/null
echo "$tag"

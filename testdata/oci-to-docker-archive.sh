#!/usr/bin/env bash
# Turns an OCI image layout tar (testdata/build-images.sh) into what `docker load` of
# Docker 20.10 reads (a manifest.json naming the config and layer blobs), tagged TAG.
#
#   testdata/oci-to-docker-archive.sh IN.tar OUT.tar TAG
# Needs: jq.
set -euo pipefail
in=${1:?usage: oci-to-docker-archive.sh IN.tar OUT.tar TAG}
out=${2:?}
tag=${3:?}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xf "$in" -C "$work"
blob() { echo "blobs/sha256/${1#sha256:}"; }
manifest=$(blob "$(jq -r '.manifests[0].digest' "$work/index.json")")
config=$(blob "$(jq -r '.config.digest' "$work/$manifest")")
layers=$(jq -c '[.layers[].digest | "blobs/sha256/" + ltrimstr("sha256:")]' "$work/$manifest")
jq -n --arg config "$config" --arg tag "$tag" --argjson layers "$layers" \
  '[{Config: $config, RepoTags: [$tag], Layers: $layers}]' > "$work/manifest.json"
tar -cf "$out" -C "$work" manifest.json blobs

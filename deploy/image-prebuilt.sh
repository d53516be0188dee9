#!/usr/bin/env bash
# Builds the image from a fulfilld binary and a component built on this machine (the Dockerfile's
# `runtime-prebuilt` target), for machines whose container builds cannot fetch the Rust toolchain
# or a builder image. deploy/README.md, "The image".
#
#   deploy/image-prebuilt.sh [-t TAG] [--bin PATH] [--wasm PATH] [-- extra build args...]
#
# Defaults: --bin target/release/fulfilld (cargo build --release -p fulfilld --locked),
# --wasm target/wasm32-wasip2/component/fulfillment.wasm (make components), -t fulfilld:local.
# CONTAINER_TOOL picks the builder (podman, docker or buildah; default: the first found).
# BASE (environment) overrides the runtime base image (default debian:bookworm-slim).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=fulfilld:local
bin=target/release/fulfilld
wasm=target/wasm32-wasip2/component/fulfillment.wasm
while [ $# -gt 0 ]; do
  case "$1" in
    -t) tag=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --wasm) wasm=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [-t TAG] [--bin PATH] [--wasm PATH] [-- build args...]" >&2; exit 2 ;;
  esac
done

[ -x "$bin" ] || { echo "error: no binary at $bin: cargo build --release -p fulfilld --locked (or pass --bin)" >&2; exit 1; }
[ -f "$wasm" ] || { echo "error: no component at $wasm: make components (or pass --wasm)" >&2; exit 1; }
# The component must be loadable by this very binary, and the packed one (with its manifest, as
# `make components` leaves it), not the bare cargo output.
checked=$("$bin" component check "$wasm" 2>/dev/null) || { echo "error: $bin refuses $wasm (fulfilld component check)" >&2; exit 1; }
if grep -q '^manifest: none' <<<"$checked"; then
  echo "error: $wasm has no manifest: make components packs it (fulfilld component pack ... --manifest components/fulfillment/component.toml)" >&2
  exit 1
fi

tool=${CONTAINER_TOOL:-}
if [ -z "$tool" ]; then
  for t in podman docker buildah; do command -v "$t" >/dev/null 2>&1 && { tool=$t; break; }; done
fi
[ -n "$tool" ] || { echo "error: no podman, docker or buildah on PATH" >&2; exit 1; }

ctx=target/image-prebuilt
rm -rf "$ctx" && mkdir -p "$ctx"
cp "$bin" "$ctx/fulfilld"
cp "$wasm" "$ctx/fulfillment.wasm"

args=(-f Dockerfile --target runtime-prebuilt -t "$tag")
[ -n "${BASE:-}" ] && args+=(--build-arg "BASE=$BASE")
case "$tool" in
  buildah) "$tool" bud --format docker "${args[@]}" "$@" "$ctx" ;;
  podman) "$tool" build --format docker "${args[@]}" "$@" "$ctx" ;;
  *) "$tool" build "${args[@]}" "$@" "$ctx" ;;
esac
echo "built $tag from $bin and $wasm ($tool)"

# The fulfilld image: the `fulfilld` binary and the default component, run as a non-root user,
# configured from the environment (docs/operations.md, "Configuration"). deploy/README.md says
# how to build and run it.
#
# Two ways to build it, one runtime stage layout:
#
#   docker build -t fulfilld .                       # from source: the default target, `runtime`
#                                                    # (BuildKit: Docker 23 or newer; or podman/buildah)
#   deploy/image-prebuilt.sh                         # target `runtime-prebuilt`: a binary and a
#                                                    # component built on the host, packaged as is
#
# BUILDER and BASE name the two base images, so a registry mirror (or a locally made image) can
# stand in for Docker Hub: --build-arg BUILDER=mirror.example/rust:1.95.0-bookworm.
# BUILDER must have rustup and a C toolchain (the official rust image has both); the toolchain
# itself comes from rust-toolchain.toml. BASE must be Debian 12 (bookworm) or compatible: the
# binary links against the builder's glibc.

ARG BUILDER=docker.io/library/rust:1.95.0-bookworm
ARG BASE=docker.io/library/debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# runtime-base: what both runtime targets share.
FROM ${BASE} AS runtime-base
# ca-certificates: the host trusts the system roots for Salesforce, WHMCS and OTLP over TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER, and volume
# ownership (fsGroup, chown on the host) needs a known id.
RUN groupadd --system --gid 10001 fulfilld \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fulfilld --no-create-home \
      --shell /usr/sbin/nologin fulfilld \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/fulfilld
# Every setting comes from the environment (fulfilld serve --help lists them). These are the
# image's defaults; override any of them at run time.
#   FULFILLD_COMPONENT   the default component shipped in the image
#   FULFILLD_STATE_DIR   the embedded store (used when REDIS_URL is unset): the volume below
#   FULFILLD_HTTP_ADDR   /health, /livez, /readyz, /metrics reachable from outside the container
#                        (the admin API, FULFILLD_ADMIN_ADDR, stays on loopback unless set)
ENV FULFILLD_COMPONENT=/usr/lib/fulfilld/fulfillment.wasm \
    FULFILLD_STATE_DIR=/var/lib/fulfilld \
    FULFILLD_HTTP_ADDR=0.0.0.0:8080
WORKDIR /var/lib/fulfilld
VOLUME ["/var/lib/fulfilld"]
EXPOSE 8080
# serve stops gracefully on SIGTERM (docs/operations.md, "Stopping"): give the runtime a stop
# timeout longer than FULFILLD_SHUTDOWN_GRACE_MS (default 30 s): docker stop -t 45,
# compose stop_grace_period, Kubernetes terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
# No HEALTHCHECK: the same image also runs `fulfilld sandbox`, which has no /livez, and
# Kubernetes uses its own probes. deploy/compose.yaml sets one per service.
ENTRYPOINT ["/usr/bin/fulfilld"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
# runtime-prebuilt: packages a binary and a component built elsewhere. The build context is a
# directory holding exactly `fulfilld` and `fulfillment.wasm` (deploy/image-prebuilt.sh stages
# them from target/ and builds with --target runtime-prebuilt). The binary must be built for
# linux/amd64 against glibc no newer than BASE's (Debian 12: 2.36).
FROM runtime-base AS runtime-prebuilt
COPY --chmod=0755 fulfilld /usr/bin/fulfilld
COPY --chmod=0644 fulfillment.wasm /usr/lib/fulfilld/fulfillment.wasm
USER 10001:10001

# ---------------------------------------------------------------------------------------------
# build: what the Makefile runs, with the toolchain rust-toolchain.toml pins.
FROM ${BUILDER} AS build
WORKDIR /src
# The pinned toolchain (channel, components, wasm32-wasip2) in a layer of its own, so a source
# change does not download it again. `rustup toolchain install` with no name reads
# rust-toolchain.toml (rustup >= 1.28); `rustup show` installs it on older rustups.
COPY rust-toolchain.toml ./
RUN rustup toolchain install || rustup show
COPY . .
# `make components` builds and packs the default component (with its manifest) exactly as
# `make test` and `make demo` use it; then the release binary. --locked: Cargo.lock as committed.
# The caches keep the crates and the target directory between builds (BuildKit, buildah).
RUN --mount=type=cache,id=fulfilld-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=fulfilld-target,target=/src/target \
    make components CARGO="cargo --locked" \
 && cargo build --release -p fulfilld --locked \
 && install -D -m 0755 target/release/fulfilld /out/fulfilld \
 && install -D -m 0644 target/wasm32-wasip2/component/fulfillment.wasm /out/fulfillment.wasm \
 && /out/fulfilld component check /out/fulfillment.wasm

# ---------------------------------------------------------------------------------------------
# runtime (the default target): the image built from source.
FROM runtime-base AS runtime
COPY --from=build /out/fulfilld /usr/bin/fulfilld
COPY --from=build /out/fulfillment.wasm /usr/lib/fulfilld/fulfillment.wasm
USER 10001:10001

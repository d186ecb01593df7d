# syntax=docker/dockerfile:1
# The operator's image: a Rust builder stage, then a minimal runtime (glibc,
# libgcc, CA certificates) that runs the binary as the numeric non-root user
# 65532. Base images are build arguments, so they can come from a mirror:
#
#   docker build -t <registry>/redeploy-operator:0.1.0 \
#     --build-arg REDEPLOY_GIT_COMMIT=$(git rev-parse HEAD) .
#
# `make image` builds the same layout (binary, user, entrypoint) without a
# container daemon: see hack/build-operator-image.sh.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# No .git in the build context: the commit `--version` and
# redeploy_build_info report comes from here (build.rs).
ARG REDEPLOY_GIT_COMMIT=unknown
ENV REDEPLOY_GIT_COMMIT=${REDEPLOY_GIT_COMMIT}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin redeploy-operator \
 && strip -o /redeploy-operator target/release/redeploy-operator

FROM ${RUNTIME_IMAGE}
ARG REDEPLOY_GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="redeploy-operator" \
      org.opencontainers.image.revision="${REDEPLOY_GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /redeploy-operator /usr/local/bin/redeploy-operator
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/redeploy-operator"]
CMD ["run"]

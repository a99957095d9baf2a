# syntax=docker/dockerfile:1
# The gateway in a small image: built in a full Rust image, run as a non-root user
# on debian-slim. Model files are mounted at run time (/models), never baked in.
#
#   docker build -t ragway .
#
# The CUDA variant (local models on an NVIDIA GPU) builds with the `cuda` feature
# on CUDA images (nvcc to build, the CUDA runtime to run):
#
#   docker build -t ragway:cuda --build-arg FEATURES=cuda --build-arg CUDA_COMPUTE_CAP=90 \
#     --build-arg BUILDER=ragway-builder:cuda \
#     --build-arg RUNTIME=nvidia/cuda:12.4.1-runtime-ubuntu22.04 .
#
# where ragway-builder:cuda is nvidia/cuda:12.4.1-devel-ubuntu22.04 with rustup's
# 1.96 toolchain (docs/deploy.md).
ARG BUILDER=rust:1.96-bookworm
ARG RUNTIME=debian:bookworm-slim

FROM ${BUILDER} AS build
ARG FEATURES=""
# For the cuda feature: the GPU's compute capability (e.g. 90 for H100), since no
# GPU is visible while the image builds.
ARG CUDA_COMPUTE_CAP=""
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/src/target \
    --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --locked --release --bin ragway --features "${FEATURES}" \
    && cp target/release/ragway /usr/local/bin/ragway

FROM ${RUNTIME}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/ragway ragway \
    && mkdir -p /var/lib/ragway /etc/ragway \
    && chown ragway /var/lib/ragway
COPY --from=build /usr/local/bin/ragway /usr/local/bin/ragway
USER ragway
WORKDIR /var/lib/ragway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["ragway"]
CMD ["serve"]

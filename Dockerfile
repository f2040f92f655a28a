# syntax=docker/dockerfile:1
# weir's container image: the examples (wordcount, visit_windows) and the
# `weir` CLI, built with the RocksDB state backend, on a slim Debian.
#
#   docker build -t weir:latest .
#   docker run --rm weir:latest /opt/weir/bin/wordcount --help
#
# deploy/kubernetes/ runs /opt/weir/bin/wordcount from it; deploy/systemd/
# expects the same binary at the same path on the host. The Kafka feature
# (librdkafka) is not built in: add `--features rocksdb,kafka` and cmake to
# the build stage for it.

# --- build: Rust, plus what RocksDB's C++ build needs (a C++ compiler, and
# libclang for bindgen) ---
FROM rust:1-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libclang-dev g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches keep the registry and the build between image builds; the
# binaries are copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features rocksdb --examples --bin weir \
 && mkdir -p /out \
 && cp target/release/examples/wordcount target/release/examples/visit_windows \
       target/release/weir /out/

# --- runtime: the binaries, the default configuration, nothing else ---
FROM debian:bookworm-slim
# ca-certificates: TLS to AWS S3 (https) for s3:// checkpoint storage.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 weir \
 && useradd --system --uid 10001 --gid weir --home-dir /opt/weir --no-create-home weir
COPY --from=build /out/ /opt/weir/bin/
COPY bin/weir-supervise.sh /opt/weir/bin/weir-supervise.sh
# The defaults, for reference and for `docker run` without a mounted
# configuration: every option is listed there with its default.
COPY conf/weir.yaml /opt/weir/conf/weir.yaml
ENV PATH=/opt/weir/bin:$PATH \
    WEIR_CONF_DIR=/opt/weir/conf
WORKDIR /opt/weir
USER 10001:10001
# The REST API / web UI, the JobManager's RPC port, a TaskManager's data port
# (as deploy/kubernetes configures them).
EXPOSE 8081 6123 6121
CMD ["/opt/weir/bin/wordcount", "--help"]

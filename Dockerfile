# Flumen in a container image: the `flumen` binary on a small Debian base,
# as the entrypoint.
#
#   docker build -t flumen .
#   docker run --rm -v "$PWD/examples:/pipelines" flumen run /pipelines/quickstart.yaml
#
# The build stage compiles the release binary (the Kafka client's bundled
# librdkafka needs a C toolchain, OpenSSL and zlib headers); the runtime
# stage holds the binary and the libraries it links: OpenSSL, zlib and the
# CA certificates.

FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev perl python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin flumen \
 && cp target/release/flumen /usr/local/bin/flumen

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/flumen flumen
COPY --from=build /usr/local/bin/flumen /usr/local/bin/flumen
USER flumen
WORKDIR /var/lib/flumen
# Prometheus metrics, with `--metrics-addr 0.0.0.0:9464`.
EXPOSE 9464
ENTRYPOINT ["flumen"]
CMD ["--help"]

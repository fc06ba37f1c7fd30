# Container images of mxlimit, one target per binary:
#
#   docker build --target limiter-server -t mxlimit/limiter-server:0.1.0 .
#   docker build --target mx-agent       -t mxlimit/mx-agent:0.1.0 .
#
# The build stage compiles the binaries once (protoc is vendored: no system
# protobuf compiler). The runtime is Debian slim with the binary alone, as an
# unprivileged user; the file system can be mounted read-only.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p limiter-server -p mx-agent -p mxlimit-cli \
    && install -m 0755 target/release/limiter-server target/release/mx-agent \
        target/release/mxlimit /usr/local/bin/

FROM debian:bookworm-slim AS runtime
# The system's roots, for rediss:// and https endpoints given no CA of their own.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# 65532: the conventional "nonroot" user; no shell, no home, no files of its own.
USER 65532:65532

# Apache-2.0. With the operator's command, for `kubectl exec ... -- mxlimit top`.
FROM runtime AS limiter-server
COPY --from=build /usr/local/bin/limiter-server /usr/local/bin/limiter-server
COPY --from=build /usr/local/bin/mxlimit /usr/local/bin/mxlimit
ENV MXLIMIT_LISTEN=0.0.0.0:7525
EXPOSE 7525
# Serving means the store answers too (gRPC health of mxlimit.v1.Limiter). Without an
# address the check asks this configuration's own plaintext port: --health-listen
# when TLS is on, else the gRPC port.
HEALTHCHECK --interval=10s --timeout=7s --start-period=5s \
    CMD ["limiter-server", "--health-check"]
ENTRYPOINT ["limiter-server"]

# GPL-3.0-or-later (it links indymilter).
FROM runtime AS mx-agent
COPY --from=build /usr/local/bin/mx-agent /usr/local/bin/mx-agent
EXPOSE 7026 7027 7028
ENTRYPOINT ["mx-agent"]

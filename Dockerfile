# syntax=docker/dockerfile:1
# agent-stream service image. Build: docker build -t agent-stream .
# Runs `agent-stream serve`; needs DATABASE_URL, REDIS_URL and AGENT_STREAM_AUTH_SECRET
# (or AGENT_STREAM_AUTH_SECRET_FILE); see compose.yml. `agent-stream token` mints tokens.
# Migrations are embedded in the binary and applied at start.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build artifacts between builds; the binary
# is copied out of the cached target dir within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin agent-stream \
 && cp target/release/agent-stream /usr/local/bin/agent-stream

FROM debian:bookworm-slim
# curl only for the compose healthcheck (of /readyz, which needs no token);
# ca-certificates for TLS to managed PostgreSQL and Redis (the system's roots).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --shell /usr/sbin/nologin agent-stream
COPY --from=builder /usr/local/bin/agent-stream /usr/local/bin/agent-stream
USER agent-stream
ENV AGENT_STREAM_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["agent-stream"]
CMD ["serve"]

# The omendb server. Build: docker build -t omendb .   Run: docker run -p 8080:8080 -p 9090:9090 -v omendb-data:/data omendb
# (The API listens on 0.0.0.0 inside the container so that a published port reaches it; this
# version has no authentication, so publish it only on trusted networks.)

# --- build ---
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p omendb-server \
 && cp target/release/omendb /usr/local/bin/omendb

# --- run ---
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin omendb \
 && mkdir -p /data && chown omendb:omendb /data
COPY --from=build /usr/local/bin/omendb /usr/local/bin/omendb
USER omendb
WORKDIR /data
VOLUME ["/data"]
ENV OMENDB_STORAGE__PATH=/data \
    OMENDB_SERVER__LISTEN=0.0.0.0:8080 \
    OMENDB_SERVER__ADMIN_LISTEN=0.0.0.0:9090 \
    OMENDB_LOG__FORMAT=json
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9090/health/ready || exit 1
# SIGTERM (docker stop) drains requests, syncs the WAL and exits 0; give it the grace period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/omendb"]
CMD ["serve"]

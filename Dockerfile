# recsys serving image. Build: docker build -t recsys .
# Run:  docker run -p 8082:8082 -v /path/to/project:/project recsys
# The project (store/, lineage.db, config.json, models/ pointer files) is a
# volume: the image holds only the binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/recsys /usr/local/bin/recsys

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /project --shell /usr/sbin/nologin recsys \
    && mkdir -p /project && chown recsys /project
COPY --from=build /usr/local/bin/recsys /usr/local/bin/recsys
USER recsys
WORKDIR /project
VOLUME ["/project"]
EXPOSE 8082
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8082"]
ENTRYPOINT ["recsys", "serve", "--bind", "0.0.0.0", "--port", "8082"]
CMD ["--config", "config.json"]

# vmcp container image: docker build -t vmcp:0.1.0 .
# Multi-stage: dependencies are compiled in a layer of their own (from stub
# sources), so changing src/ rebuilds only vmcp itself. The `dist` profile
# (Cargo.toml): release with fat LTO, what the README's benchmarks measure.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --profile dist --locked \
    && rm -rf src target/dist/.fingerprint/vmcp-* target/dist/deps/vmcp-* target/dist/deps/libvmcp-*
COPY src ./src
RUN cargo build --profile dist --locked --bin vmcp

# glibc + CA certificates (https backends, rediss://), no shell, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/dist/vmcp /usr/local/bin/vmcp
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["vmcp"]
CMD ["serve", "--config", "/etc/vmcp/vmcp.yaml"]

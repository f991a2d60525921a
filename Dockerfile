# Berth: one image for the operator (`berth operator`) and the backup agent (`berth agent …`).
#
# No builder stage: the image takes the stripped release binary the project's build produced.
# The build context is a directory holding only that binary, named `berth`:
#   cargo build --release --locked && strip -o berth target/release/berth
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
# (.dockerignore keeps everything else out of a repository-root context.)
# scripts/build-image.sh does all of this without a registry: it bootstraps the Debian base
# with mmdebstrap and passes it as BASE_IMAGE.

ARG BASE_IMAGE=docker.io/library/debian:trixie-slim
FROM ${BASE_IMAGE}

# pg_dump must be at least the server's major version: the newest PostgreSQL a DatabaseInstance
# accepts (spec.version 14–17, src/api/databaseinstance.rs). Trixie ships PostgreSQL 17.
ARG PG_MAJOR=17
ARG BASE_IMAGE
ARG VERSION
ARG REVISION
ARG DEBIAN_FRONTEND=noninteractive

# ca-certificates: S3 endpoints are verified against the system's roots (rustls-native-certs).
# The user gets a passwd entry: libpq looks its name up as the default database user.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates "postgresql-client-${PG_MAJOR}"; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log; \
    echo 'berth:x:65532:65532:berth:/tmp:/usr/sbin/nologin' >>/etc/passwd; \
    echo 'berth:x:65532:' >>/etc/group; \
    "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version

COPY --chmod=0755 berth /usr/local/bin/berth

# The root filesystem is read-only in the chart's pods and the agent Jobs: /tmp is their
# emptyDir (charts/berth/templates/deployment.yaml, src/resources/backup/jobs.rs).
ENV HOME=/tmp \
    TMPDIR=/tmp \
    PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["--help"]

LABEL org.opencontainers.image.title="berth" \
      org.opencontainers.image.description="Kubernetes operator for app environments, databases and backups; also its backup agent" \
      org.opencontainers.image.source="https://github.com/berth-dev/berth" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# agent-controller container image.
#
#   VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
#   docker build --build-arg VERSION="$VERSION" -t agent-controller:"$VERSION" .
#
# VERSION (required) is the package version of pyproject.toml — the build stops when it is not:
# it becomes the image's org.opencontainers.image.version label, and the Helm chart's default image
# tag is that version too (its appVersion). docs/install.md: building, pushing, using it.
#
# Two stages: the first installs the pinned dependencies (requirements.lock, wheels only) and the
# package into a virtualenv; the second copies just that virtualenv onto a clean slim Python,
# so no build tooling, caches or sources are left in the image. Runs as a non-root user
# (uid/gid 65532, as the Helm chart's securityContext) and works with a read-only root
# filesystem: the only writable paths it needs are the archive volume and /tmp.

FROM python:3.11.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/agent-controller
ENV PATH=/opt/agent-controller/bin:$PATH

WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-cache-dir --no-deps --only-binary=:all: --requirement requirements.lock

COPY pyproject.toml README.md ./
# The version given must be the package's (no image labelled with another version than it runs).
# Declared here, not above: a new version does not invalidate the cached dependency layer.
ARG VERSION
RUN python -c 'import sys, tomllib; want = tomllib.load(open("pyproject.toml", "rb"))["project"]["version"]; sys.exit(None if sys.argv[1] == want else f"build with --build-arg VERSION={want} (the version of pyproject.toml), not {sys.argv[1]!r}")' "${VERSION}"
COPY controller ./controller
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && pip uninstall --yes pip setuptools


FROM python:3.11.11-slim-bookworm
ARG VERSION

LABEL org.opencontainers.image.title="agent-controller" \
      org.opencontainers.image.description="Kubernetes controller for AI agents: archives their logs and tears down everything they held when they end." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 65532 agent-controller \
    && useradd --system --uid 65532 --gid agent-controller --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin agent-controller \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/agent-controller /var/lib/agent-controller/archive

COPY --from=build /opt/agent-controller /opt/agent-controller

ENV PATH=/opt/agent-controller/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AGENT_CONTROLLER_ARCHIVE_DIR=/var/lib/agent-controller/archive

USER 65532:65532
WORKDIR /var/lib/agent-controller
# metrics (/metrics), health (/healthz)
EXPOSE 9102 8081

ENTRYPOINT ["agent-controller", "run"]

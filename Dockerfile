# cht-interop: one image for `serve` (the API), `worker` (the outbox) and the one-off commands
# (`migrate`, `cht configure`, `openhim configure`). Built from the repository root:
#   docker build -t cht-interop .
# Checked by tests/docs/test_deploy_files.py with hadolint; not built in the tests (no container
# engine there).

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
RUN python -m venv /opt/cht-interop
COPY pyproject.toml README.md ./
COPY src ./src
# the package and its dependencies (all ship wheels for this platform: no compiler needed)
RUN /opt/cht-interop/bin/pip install .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 cht-interop \
    && useradd --system --uid 10001 --gid cht-interop --home-dir /var/lib/cht-interop --create-home cht-interop
COPY --from=build /opt/cht-interop /opt/cht-interop
ENV PATH=/opt/cht-interop/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/var/lib/cht-interop \
    PORT=5001
USER 10001:10001
WORKDIR /var/lib/cht-interop
EXPOSE 5001
# liveness only: /health/ready also checks the database, which a restart does not fix
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('PORT', '5001'), timeout=4)"]
ENTRYPOINT ["cht-interop"]
CMD ["serve", "--host", "0.0.0.0"]

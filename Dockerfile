# quotagate gateway image: docker build -t quotagate:local .
# Build stage: install the distribution (and its bundled tiktoken encodings) into a venv.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md* LICENSE* ./
COPY proxy ./proxy
# The encodings are package data: prove they load with no network before the image is used.
RUN pip install . \
    && cd / && python -c "from proxy.encodings import get_encoding; get_encoding('cl100k_base'); get_encoding('o200k_base')"

# Runtime stage: the venv only, run as an unprivileged user.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROMETHEUS_DISABLE_CREATED_SERIES=True
RUN groupadd --system --gid 10001 quotagate \
    && useradd --system --uid 10001 --gid quotagate --home-dir /app --shell /usr/sbin/nologin quotagate \
    && mkdir -p /app/config \
    && chown -R quotagate:quotagate /app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# python:slim has no curl: probe /healthz with the standard library
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
CMD ["quotagate", "serve", "--config", "/app/config/compose.yaml", "--host", "0.0.0.0", "--port", "8080"]

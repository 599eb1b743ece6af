# syntax=docker/dockerfile:1
# mobile-multimodal-llm: the HTTP service (`mobile-mm serve`) on port 8080, as docker-compose.yml
# runs it (app-prod, and app-gpu with the CUDA build of torch).
#
#   docker build -t mobile-multimodal-llm .                                        # CPU torch
#   docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t mobile-multimodal-llm:gpu .
#
# Logs go to /app/logs/application.log (and stdout), profiles to /app/profiles, data (SQLite
# database, backups) to /app/data: mount volumes there.

FROM python:3.11-slim-bookworm AS build
# The CPU wheel index keeps the image small; PyPI's default torch wheel carries CUDA.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and pinned: anything unpinned would pull another build.
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install .

FROM python:3.11-slim-bookworm
# Fonts render the text images of the model's OCR health probe. Not version-pinned: Debian
# security updates replace the exact version within bookworm.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MOBILE_MM_DATA_DIR=/app/data \
    MOBILE_MM_LOG_DIR=/app/logs \
    MOBILE_MM_PROFILE_DIR=/app/profiles
WORKDIR /app
COPY monitoring/observability.yml ./monitoring/observability.yml
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app/data /app/logs /app/profiles/cpu /app/profiles/memory /app/profiles/gpu \
    && chown -R app:app /app/data /app/logs /app/profiles
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/alive', timeout=5)"]
# SIGTERM: /ready turns 503, in-flight requests finish, then the process exits.
STOPSIGNAL SIGTERM
CMD ["mobile-mm", "serve", "--host", "0.0.0.0", "--port", "8080", "--model", "default"]

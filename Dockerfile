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
# torch first and pinned: anything unpinned would pull another build. Its C++ headers
# (include/) and its own test suite (test/) are never used at run time: ~145 MB.
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0 \
    && rm -rf /opt/venv/lib/python3.11/site-packages/torch/test \
              /opt/venv/lib/python3.11/site-packages/torch/include
WORKDIR /src
# The dependencies in a layer of their own, from pyproject.toml alone: a change under src/
# rebuilds only the last layer, not every dependency.
COPY pyproject.toml README.md ./
# With the postgres extra (psycopg): MOBILE_MM_DATABASE_URL may name a PostgreSQL database.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['postgres']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY src ./src
RUN pip install --no-deps .

FROM python:3.11-slim-bookworm
# The live canary (serving/canary.py) scores OCR on text images rendered from held-out words
# (/usr/share/dict/words: wamerican) in the training fonts (data/text_images.py TRAIN_FONTS:
# DejaVu, Liberation, FreeFont, URW base35); without them the canary's OCR set cannot be built.
# postgresql-client: pg_dump and psql, what `db backup` / `db restore` run against PostgreSQL.
# Not version-pinned: Debian security updates replace the exact version within bookworm.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf fonts-urw-base35 \
        wamerican postgresql-client \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MOBILE_MM_DATA_DIR=/app/data \
    MOBILE_MM_LOG_DIR=/app/logs \
    MOBILE_MM_PROFILE_DIR=/app/profiles
WORKDIR /app
COPY monitoring/observability.yml ./monitoring/observability.yml
# The runtime user and its group, both named app, both 10001 (files chowned app:app are the
# running process's user's and group's).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app/data /app/logs /app/profiles/cpu /app/profiles/memory /app/profiles/gpu \
    && chown -R app:app /app/data /app/logs /app/profiles
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/alive', timeout=5)"]
# SIGTERM: /ready turns 503, in-flight requests finish (MOBILE_MM_SHUTDOWN_GRACE_S, 30 s), then
# the process exits. `docker stop` waits 10 s unless told more: `docker stop -t 45`;
# docker-compose.yml sets stop_grace_period.
STOPSIGNAL SIGTERM
# No flags: every serve setting comes from its MOBILE_MM_* variable (host 0.0.0.0, port 8080, the
# bundled model at fp32 when unset), so `docker run -e MOBILE_MM_QUANTIZATION=int2` serves INT2.
CMD ["mobile-mm", "serve"]

# QQQ LEAPS bot: slim Python, dependencies in a cached layer, non-root, /data volume, health check.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DATA_DIR=/data

WORKDIR /app

# Dependencies first (cached until pyproject.toml changes): install the project's requirements
# from a stub package, then the real source.
COPY pyproject.toml README.md ./
RUN mkdir -p bot strategy storage handlers broker \
    && for p in bot strategy storage handlers broker; do touch $p/__init__.py; done \
    && pip install . \
    && pip uninstall -y qqq-leaps-bot \
    && rm -rf bot strategy storage handlers broker build

COPY bot ./bot
COPY strategy ./strategy
COPY storage ./storage
COPY handlers ./handlers
COPY broker ./broker
RUN pip install --no-deps . && rm -rf build

RUN useradd --system --uid 10001 --home-dir /data bot \
    && mkdir -p /data && chown bot:bot /data
USER bot
VOLUME ["/data"]

HEALTHCHECK --interval=60s --timeout=10s --start-period=90s --retries=3 CMD ["qqq-bot", "health"]

# exec form: qqq-bot is PID 1's child-free process and receives SIGTERM directly for a clean stop
CMD ["qqq-bot", "run"]

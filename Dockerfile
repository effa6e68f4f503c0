# The feedbackloop image: the `feedbackloop` command (worker, labeling service,
# dashboard, ...) installed from this package. docker-compose.yml builds it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FEEDBACKLOOP_STATE_DIR=/var/lib/feedbackloop

WORKDIR /src
COPY pyproject.toml README.md ./
COPY feedbackloop feedbackloop
COPY streams streams
COPY schemas schemas
COPY consumers consumers
COPY dashboards dashboards
RUN pip install . \
    && useradd --system --create-home --home-dir /var/lib/feedbackloop feedbackloop

USER feedbackloop
WORKDIR /var/lib/feedbackloop
ENTRYPOINT ["feedbackloop"]
CMD ["--help"]

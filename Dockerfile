# One image for every process: the API (gunicorn), the relays, the Celery workers and the migrations.
# docker-compose.yml picks the process with `command:`; health checks use python (no curl in the image).
# No `# syntax=` line: BuildKit would pull the frontend from a registry; the legacy builder and BuildKit
# both build this file offline once PYTHON_IMAGE is present (tests/compose builds on a local stand-in).

# Both stages run on the same Python image: the virtualenv's interpreter link points into it.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /src

# Runtime dependencies first (pinned in pyproject.toml, no dev extras), so code changes reuse this layer;
# the library (shared/flask-outbox) is installed from its folder with the project.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if not d.startswith('flask-outbox')))" \
        > /tmp/requirements.txt \
    && pip install --only-binary=:all: -r /tmp/requirements.txt

COPY README.md ./
COPY shared/ shared/
COPY order_service/ order_service/
COPY invoice_worker/ invoice_worker/
RUN pip install ./shared/flask-outbox .


FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    VAR_DIR=/app/var

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app/var \
    && chown app:app /app/var

# Only the installed virtualenv is shipped: no sources in the working directory to shadow the package,
# no pip cache, no build tools (the dependencies are wheels: --only-binary above).
COPY --from=build /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

EXPOSE 8000
CMD ["gunicorn", "order_service.wsgi:app", "--bind", "0.0.0.0:8000"]

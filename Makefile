# Entry points are the same natively and in docker compose: see README.md.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
LIBRARY := shared/flask-outbox
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LIBRARY)/pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
# make test's workers (pytest-xdist): groups that must not overlap are in tests/conftest.py; PYTEST_PARALLEL= runs serially.
PYTEST_PARALLEL ?= -n 5 --dist loadgroup

.PHONY: install migrate run test test-unit lint up down chaos faults-long

$(STAMP): pyproject.toml $(LIBRARY)/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the project and its dev tools into $(VENV)..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e $(LIBRARY) -e '.[dev,bench]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

migrate: install
	$(BIN)/flask --app order_service db upgrade
	$(BIN)/python -m invoice_worker migrate

run: migrate
	$(BIN)/python tools/run_embedded.py

# mypy's files and strictness (shared, order_service, invoice_worker) are in pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The soak runs the shipped defaults and no reconciliation; it fails on lost, doubled, wrong totals or
# an order invoiced more than 120 s after the last fault. KEEP=1 keeps the processes' logs.
# BROKER=rabbitmq: the same soak on a private RabbitMQ node (recorded as chaos-rabbitmq-N.txt).
chaos: install  ## N orders under random SIGKILLs of relays/workers and one broker kill
	$(BIN)/python -m tests.fault.chaos --orders $(or $(N),500) $(if $(SEED),--seed $(SEED)) $(if $(KEEP),--keep) \
		$(if $(BROKER),--broker $(BROKER)) \
		--record bench/results/chaos-$(if $(filter-out redis,$(BROKER)),$(BROKER)-)$(or $(N),500).txt

# Faults at their real size (minutes), shipped defaults, one fresh loop per scenario (about 20 minutes);
# SCENARIOS="redis-back-empty ..." runs some. The figures in docs/faults.md come from its results file.
faults-long: install  ## Redis restarts, losses and refusals, workers down, a cut-off relay, a read-only database
	$(BIN)/python -m tests.fault.long $(SCENARIOS) --record bench/results/faults-long.txt

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# The Compose v2 plugin (`docker compose`) or the v1 client (`docker-compose`), whichever is installed. The
# project name is passed (Compose v1 rejects a top-level `name:`); ENV_FILE=path reads secrets from another file
# than ./.env. Local images instead of the official ones: see README, "Production shape: docker compose".
# BROKER=rabbitmq: the RabbitMQ shape (docker-compose.rabbitmq.yml on top); `make down` stops either shape.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)
COMPOSE_PROJECT ?= order-outbox
COMPOSE_FILES = $(if $(filter rabbitmq,$(BROKER)),-f docker-compose.yml -f docker-compose.rabbitmq.yml,$(if \
	$(filter-out redis,$(BROKER)),$(error BROKER=$(BROKER): redis (the default) or rabbitmq)))
COMPOSE_ARGS = -p $(COMPOSE_PROJECT) $(COMPOSE_FILES) $(if $(ENV_FILE),--env-file $(ENV_FILE))

up:
	$(COMPOSE) $(COMPOSE_ARGS) up -d --build

# --remove-orphans: a service of the other shape (rabbitmq after a `make up BROKER=rabbitmq`) is stopped too,
# else it keeps the network busy and down fails.
down:
	$(COMPOSE) $(COMPOSE_ARGS) down --remove-orphans

# Benchmarks (bench/): `make bench` runs the product and the naive Flask+Celery baseline
# (bench/naive_app.py) in paired rounds on the local Postgres and Redis, and profiles the product with
# py-spy; BENCH_QUICK=1 for a smoke run (written to e2e-quick.json). BROKER=rabbitmq: both on the local
# RabbitMQ instead, on a vhost and user the bench makes with rabbitmqctl and deletes (e2e-rabbitmq.json).
# `make load` runs the locust file against a running stack at HOST.
BROKER ?= redis
HOST ?= http://127.0.0.1:8000
LOAD_USERS ?= 20
LOAD_SPAWN_RATE ?= 5
LOAD_TIME ?= 60s
.PHONY: bench load

bench: install
	@$(BIN)/python -c "import aiohttp, psutil" 2>/dev/null && test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet --disable-pip-version-check -e $(LIBRARY) -e '.[dev,bench]'
	BENCH_BROKER=$(BROKER) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.e2e

load: install
	@$(BIN)/python -c "import locust" 2>/dev/null || $(BIN)/python -m pip install --quiet --disable-pip-version-check -e $(LIBRARY) -e '.[dev,load]'
	$(BIN)/locust -f bench/locustfile.py --headless --host $(HOST) -u $(LOAD_USERS) -r $(LOAD_SPAWN_RATE) -t $(LOAD_TIME) --only-summary

# The relay benchmark (bench/relay.py): own databases on the local Postgres, own queues on Redis;
# BROKER=rabbitmq: the relay against the raw confirmed-publish floor on a bench vhost (bench/relay_rabbitmq.py).
# BENCH_QUICK=1 for a smoke run (written to *-quick.json).
.PHONY: bench-relay
bench-relay: install
	@$(BIN)/python -c "import psutil" 2>/dev/null || $(BIN)/python -m pip install --quiet --disable-pip-version-check -e $(LIBRARY) -e '.[dev,bench]'
	$(BIN)/python -m $(if $(filter rabbitmq,$(BROKER)),bench.relay_rabbitmq,bench.relay)

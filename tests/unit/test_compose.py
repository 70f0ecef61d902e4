"""The compose production shape and its RabbitMQ override, checked by parsing (no docker engine needed).

Every process the compose file starts must exist in the code base: a renamed module or a removed
entry point fails here instead of in a crash-looping container.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
RABBITMQ_FILE = ROOT / "docker-compose.rabbitmq.yml"
"""The RabbitMQ shape: merged on top of COMPOSE_FILE (``make up BROKER=rabbitmq``)."""
DOCKERFILE = ROOT / "Dockerfile"
INIT_SCRIPT = ROOT / "deploy" / "postgres" / "init-databases.sh"
ROLES_SQL = ROOT / "deploy" / "postgres" / "roles.sql"
REDIS_START = ROOT / "deploy" / "redis" / "start.sh"
ENV_EXAMPLE = ROOT / ".env.example"

PIPELINE = {"api", "relay", "worker", "invoice-relay", "order-consumer"}
"""The five processes of the loop: orders -> invoices -> InvoiceCreated -> orders invoiced."""
ALL_SERVICES = {"postgres", "redis", "migrate", "flower", *PIPELINE}
APP_SERVICES = {"migrate", *PIPELINE}
LONG_RUNNING = {"postgres", "redis", "flower", *PIPELINE}
CELERY_WORKERS = ["worker", "order-consumer"]
ALLOWED_CONDITIONS = {"service_healthy", "service_completed_successfully"}
SECRET_INTERPOLATION = re.compile(r"^\$\{[A-Z_]*(PASSWORD|KEY|KEYS|AUTH):\?[^}]*\}$")
"""A secret from .env, required: ``${NAME:?message}`` (compose refuses to start without it)."""
USERINFO = re.compile(r"://(?P<user>[^/:@\s]+):(?P<password>\$\{[^}]*\}|[^@\s]*)@")
DATABASE_URLS = {"ORDERS_DATABASE_URL": "orders", "INVOICES_DATABASE_URL": "invoices"}
DATABASES_USED = {
    "api": {"orders"},
    "relay": {"orders"},
    "order-consumer": {"orders"},
    "worker": {"invoices"},
    "invoice-relay": {"invoices"},
    "flower": set(),
}
"""Each long-running app service's databases: its own service's only, as its app role."""
SIGNING = {"relay", "invoice-relay", "worker", "order-consumer"}
"""The processes that sign (relays) or check (workers) messages: MESSAGE_SIGNING_KEY."""
# Executables the app services run, and the distribution (in pyproject dependencies) that provides each.
EXECUTABLE_DISTRIBUTIONS = {"gunicorn": "gunicorn", "celery": "celery", "flask": "flask"}

Service = dict[str, Any]


def load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE_FILE)


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return load(RABBITMQ_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture
def project_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve modules against this checkout, however pytest was started."""
    monkeypatch.syspath_prepend(str(ROOT))


def environment(service: Service) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def healthcheck_argv(service: Service) -> list[str]:
    test = argv(service["healthcheck"]["test"])
    if test[0] == "CMD-SHELL":
        return shlex.split(" ".join(test[1:]))
    if test[0] == "CMD":
        return test[1:]
    return test


def simple_commands(words: list[str]) -> Iterator[list[str]]:
    """Split an argv into the programs it runs, unwrapping `sh -c "a && b"` and shell separators."""
    if len(words) >= 3 and words[0] in {"sh", "bash"} and words[1] == "-c":
        words = shlex.split(words[2])
    current: list[str] = []
    for word in words:
        if word in {"&&", "||", ";", "|"}:
            if current:
                yield current
            current = []
        else:
            current.append(word)
    if current:
        yield current


def commands_of(service: Service) -> list[list[str]]:
    found = list(simple_commands(argv(service["command"]))) if "command" in service else []
    if "healthcheck" in service:
        found.extend(simple_commands(healthcheck_argv(service)))
    return found


def option(words: list[str], *names: str) -> str:
    for index, word in enumerate(words):
        if word in names:
            return words[index + 1]
        for name in names:
            if name.startswith("--") and word.startswith(name + "="):
                return word.split("=", 1)[1]
    raise AssertionError(f"{names[0]} missing from {words}")


def find_module(name: str) -> importlib.machinery.ModuleSpec | None:
    """Locate a module like ``importlib.util.find_spec`` without executing any package ``__init__``."""
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    for part in rest:
        if spec is None or spec.submodule_search_locations is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(
            f"{spec.name}.{part}", list(spec.submodule_search_locations)
        )
    return spec


def assert_module_exists(name: str) -> importlib.machinery.ModuleSpec:
    spec = find_module(name)
    assert spec is not None, f"the compose file runs module {name!r}, which does not exist"
    return spec


def assert_runnable_with_dash_m(name: str) -> None:
    spec = assert_module_exists(name)
    if spec.submodule_search_locations is not None:
        assert_module_exists(f"{name}.__main__")


def defines_name(source: str, name: str) -> bool:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return True
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return True
        if isinstance(node, ast.ImportFrom | ast.Import) and any(
            (alias.asname or alias.name) == name for alias in node.names
        ):
            return True
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            return True
    return False


def check_program_exists(words: list[str]) -> None:
    program = words[0]
    if program in {"python", "python3"} and "-c" in words:
        ast.parse(option(words, "-c"))  # inline code (the API healthcheck) must at least be valid Python
    elif program in {"python", "python3"}:
        assert_runnable_with_dash_m(option(words, "-m"))
    elif program == "gunicorn":
        config = option(words, "-c", "--config")
        assert config.startswith("python:"), "the API's gunicorn hooks serve its /metrics off the public port"
        assert_module_exists(config.removeprefix("python:"))
        target = next(
            word for word in words[1:] if not word.startswith("-") and ":" in word and word != config
        )
        module_name, attribute = target.split(":", 1)
        spec = assert_module_exists(module_name)
        assert spec.origin is not None
        source = Path(spec.origin).read_text(encoding="utf-8")
        assert defines_name(source, attribute), f"{spec.origin} defines no {attribute!r} for gunicorn"
    elif program == "celery":
        assert_module_exists(option(words, "-A", "--app"))
    elif program == "flask":
        assert_module_exists(option(words, "--app").split(":", 1)[0])
    elif program in {"pg_isready", "redis-cli", "redis-server", "grep"}:
        return  # provided by the postgres / redis images
    else:
        raise AssertionError(f"unknown program {program!r} in the compose file: teach this test about it")


def all_strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from all_strings(key)
            yield from all_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_strings(item)


def test_all_services_of_the_production_shape_exist(services: dict[str, Service]) -> None:
    assert set(services) >= ALL_SERVICES


@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_long_running_services_have_a_healthcheck_and_restart(
    services: dict[str, Service], name: str
) -> None:
    service = services[name]
    assert service["healthcheck"]["test"], f"{name} has an empty healthcheck"
    assert healthcheck_argv(service), f"{name} has an empty healthcheck"
    assert service.get("restart") == "unless-stopped"


def test_migrate_runs_once_and_is_not_restarted(services: dict[str, Service]) -> None:
    assert str(services["migrate"].get("restart", "no")) in {"no", "False"}
    assert "healthcheck" not in services["migrate"]


def test_every_dependency_waits_on_a_condition(services: dict[str, Service]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must use the long form with a condition"
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert spec.get("condition") in ALLOWED_CONDITIONS, f"{name} -> {dependency} has no condition"


def test_app_services_start_only_after_migrations_succeeded(services: dict[str, Service]) -> None:
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in sorted(PIPELINE):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully"
        assert depends_on["redis"]["condition"] == "service_healthy"


def test_only_the_api_publishes_a_port(services: dict[str, Service]) -> None:
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert publishing == {"api"}
    assert services["api"]["ports"] == ["${API_PORT:-8000}:8000"]
    for service in services.values():
        assert service.get("network_mode") != "host"


@pytest.mark.parametrize("name", sorted(PIPELINE - {"api"}))
def test_relays_and_workers_can_be_scaled(services: dict[str, Service], name: str) -> None:
    service = services[name]
    assert "container_name" not in service
    assert "ports" not in service
    assert "hostname" not in service


@pytest.mark.parametrize("relay", ["relay", "invoice-relay"])
def test_two_relays_of_each_kind_run_and_one_that_exits_is_restarted(
    services: dict[str, Service], relay: str
) -> None:
    """A second relay takes the first's partitions when it dies, hangs (its watchdog exits) or loses Redis."""
    assert services[f"{relay}-2"] == services[relay]
    assert services[relay]["restart"] == "unless-stopped"


def test_every_postgres_password_comes_from_the_environment(services: dict[str, Service]) -> None:
    postgres_env = environment(services["postgres"])
    assert postgres_env["POSTGRES_USER"] == "postgres"  # the bootstrap superuser, for operators only
    for name in ("POSTGRES", "ORDERS_OWNER", "ORDERS_APP", "INVOICES_OWNER", "INVOICES_APP"):
        assert SECRET_INTERPOLATION.match(postgres_env[f"{name}_PASSWORD"]), name


@pytest.mark.parametrize("path", [COMPOSE_FILE, RABBITMQ_FILE], ids=lambda path: path.name)
def test_no_literal_secret_is_written_in_the_compose_files(path: Path) -> None:
    compose = load(path)
    for service in compose["services"].values():
        for key, value in environment(service).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|API_KEYS|SIGNING|AUTH", key):
                assert SECRET_INTERPOLATION.match(value), f"{key} is hard-coded or not required"
    userinfos = [match for text in all_strings(compose) for match in USERINFO.finditer(text)]
    assert userinfos, "the database and broker URLs carry their passwords"
    for userinfo in userinfos:
        assert SECRET_INTERPOLATION.match(userinfo["password"]), f"literal password for {userinfo['user']}"


def test_every_required_variable_is_in_env_example_and_empty_there() -> None:
    """A copied .env.example does not start: compose stops at the first secret left empty."""
    text = COMPOSE_FILE.read_text(encoding="utf-8") + RABBITMQ_FILE.read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert {"REDIS_PASSWORD", "MESSAGE_SIGNING_KEY", "SECRET_KEY", "ORDERS_APP_PASSWORD"} <= required
    assert "RABBITMQ_PASSWORD" in required
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if re.match(r"^[A-Z]", line)
    )
    for name in sorted(required):
        assert example.get(name) == "", f"{name} must be in .env.example, empty"
    assert "secrets.token_urlsafe(32)" in ENV_EXAMPLE.read_text(encoding="utf-8")  # how to make one


def url_user(url: str) -> str:
    match = USERINFO.search(url)
    assert match is not None, url
    return match["user"]


def test_app_services_share_one_image_and_the_fixed_environment(services: dict[str, Service]) -> None:
    images = {services[name].get("image") for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        env = environment(services[name])
        assert env["LOG_FORMAT"] == "json"
        assert services[name]["build"]["context"] == "."
    assert environment(services["api"])["API_KEYS"].startswith("${API_KEYS:?"), "no API without keys"


@pytest.mark.parametrize("name", sorted(DATABASES_USED))
def test_each_service_connects_to_its_own_database_as_its_app_role_and_to_redis_as_app(
    services: dict[str, Service], name: str
) -> None:
    env = environment(services[name])
    used = {database for variable, database in DATABASE_URLS.items() if variable in env}
    assert used == DATABASES_USED[name], "a service holds no credentials for the other service's database"
    for variable, database in DATABASE_URLS.items():
        if variable in env:
            assert env[variable].startswith(f"postgresql+psycopg://{database}_app:")
            assert env[variable].endswith(f"@postgres:5432/{database}")
    assert env["BROKER_URL"].startswith("redis://app:${REDIS_PASSWORD:?")
    assert env["BROKER_URL"].endswith("@redis:6379/0")
    assert ("MESSAGE_SIGNING_KEY" in env) == (name in SIGNING)


def test_only_migrate_connects_as_the_owners(services: dict[str, Service]) -> None:
    env = environment(services["migrate"])
    assert {url_user(env[variable]) for variable in DATABASE_URLS} == {"orders_owner", "invoices_owner"}
    assert "BROKER_URL" not in env  # migrations need no broker
    for name, service in services.items():
        for value in environment(service).values():
            if "://" in value and USERINFO.search(value):
                assert url_user(value) in {"orders_app", "invoices_app", "app"} or name == "migrate", name


def test_only_the_api_reaches_the_edge_network(compose: dict[str, Any], services: dict[str, Service]) -> None:
    """Postgres, Redis and the pipeline sit on an internal network: no way in from the host, none out."""
    assert compose["networks"]["backend"] == {"internal": True}
    assert not compose["networks"]["edge"] or not compose["networks"]["edge"].get("internal")
    for name, service in services.items():
        networks = set(service["networks"])
        assert networks == ({"backend", "edge"} if name == "api" else {"backend"}), name


def test_redis_refuses_clients_without_the_app_users_password(services: dict[str, Service]) -> None:
    redis = services["redis"]
    command = argv(redis["command"])
    assert command[:2] == ["sh", "/usr/local/share/order-outbox/redis-start.sh"]
    assert f"./deploy/redis/start.sh:{command[1]}:ro" in redis["volumes"]
    script = REDIS_START.read_text(encoding="utf-8")
    assert "user default off" in script
    assert "user app on #%s" in script  # the password's SHA-256, not the password
    assert "-@dangerous" in script
    env = environment(redis)
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"]  # the healthcheck's redis-cli authenticates
    assert healthcheck_argv(redis)[:3] == ["redis-cli", "--user", "app"]


def test_redis_persists_every_published_task(services: dict[str, Service]) -> None:
    command = argv(services["redis"]["command"])
    assert option(command, "--appendonly") == "yes"
    assert option(command, "--appendfsync") == "always"
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])


def test_postgres_creates_both_databases_at_init(services: dict[str, Service]) -> None:
    mounts = services["postgres"]["volumes"]
    init_mounts = [m for m in mounts if ":/docker-entrypoint-initdb.d/" in m]
    assert len(init_mounts) == 1
    source = ROOT / init_mounts[0].split(":", 1)[0]
    assert source.resolve() == INIT_SCRIPT
    script = INIT_SCRIPT.read_text(encoding="utf-8")
    assert script.startswith("#!")
    assert "roles orders " in script
    assert "roles invoices " in script
    roles_path = re.search(r"ROLES_SQL:-([^}]+)\}", script)
    assert roles_path is not None
    assert f"./deploy/postgres/roles.sql:{roles_path[1]}:ro" in mounts  # the SQL the integration test runs
    assert ROLES_SQL.is_file()
    assert any(m.endswith(":/var/lib/postgresql/data") for m in mounts)


def test_compose_v1_accepts_the_file(compose: dict[str, Any]) -> None:
    """docker-compose 1.29 rejects a top-level ``name:``; ``make up`` passes the project name instead."""
    assert {key for key in compose if not key.startswith("x-")} <= {"services", "volumes", "networks"}


@pytest.mark.parametrize(
    ("name", "variable", "official"),
    [("postgres", "POSTGRES_IMAGE", "postgres:16-alpine"), ("redis", "REDIS_IMAGE", "redis:7-alpine")],
)
def test_server_images_are_official_by_default_and_overridable(
    services: dict[str, Service], name: str, variable: str, official: str
) -> None:
    assert services[name]["image"] == f"${{{variable}:-{official}}}"


def test_the_app_image_base_is_a_build_argument(services: dict[str, Service]) -> None:
    for name in APP_SERVICES:
        assert services[name]["build"]["args"]["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-python:3.11-slim}"


def test_data_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    assert {"postgres-data", "redis-data"} <= set(compose["volumes"])


@pytest.mark.parametrize("name", CELERY_WORKERS)
def test_worker_healthcheck_asks_the_workers_readiness_probe(services: dict[str, Service], name: str) -> None:
    """The parent process's /readyz on METRICS_PORT: the database and the broker answer."""
    probe = " ".join(healthcheck_argv(services[name]))
    assert "http://127.0.0.1:9101/readyz" in probe
    assert "METRICS_PORT" not in environment(services[name])  # the default port, as probed


@pytest.mark.usefixtures("project_on_path")
@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_every_command_runs_code_that_exists(services: dict[str, Service], name: str) -> None:
    commands = commands_of(services[name])
    assert commands
    for words in commands:
        check_program_exists(words)


def test_the_programs_the_services_run_are_runtime_dependencies(services: dict[str, Service]) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dependencies = {
        re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
        for requirement in pyproject["project"]["dependencies"]
    }
    for name in APP_SERVICES:
        for words in commands_of(services[name]):
            distribution = EXECUTABLE_DISTRIBUTIONS.get(words[0])
            if distribution is not None:
                assert distribution in dependencies, f"{words[0]} is not a runtime dependency"


def test_the_image_installs_the_project_from_pyproject_as_a_non_root_user() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    instructions = [
        line.strip() for line in dockerfile.splitlines() if line.strip() and not line.startswith("#")
    ]
    # The base image is a build argument (tests/compose passes a local stand-in), by default the official one.
    assert instructions[0] == "ARG PYTHON_IMAGE=python:3.11-slim"
    froms = [line for line in instructions if line.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage: the final stage gets the installed virtualenv only"
    assert all(line.split()[1] == "${PYTHON_IMAGE}" for line in froms)
    assert any(line.startswith("COPY --from=build /opt/venv") for line in instructions)
    assert not any(line.startswith("# syntax=") for line in dockerfile.splitlines()), "BuildKit would pull it"
    assert any(line.startswith("COPY pyproject.toml") for line in instructions)
    for package in ("shared", "order_service", "invoice_worker"):
        assert any(line.startswith(f"COPY {package}/") for line in instructions)
    assert re.search(r"^RUN pip install \./shared/flask-outbox \.$", dockerfile, re.MULTILINE)
    assert "[dev]" not in dockerfile
    assert "PYTHONUNBUFFERED=1" in dockerfile
    users = [line.split(None, 1)[1] for line in instructions if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert not any("curl" in line for line in instructions)


def test_secrets_stay_out_of_git_and_the_image() -> None:
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored
    assert {"var", ".venv", "tests"} <= set(ignored)
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert re.search(r"^POSTGRES_PASSWORD=", example, re.MULTILINE)


def test_flower_watches_the_workers_behind_basic_auth_without_a_published_port(
    services: dict[str, Service],
) -> None:
    flower = services["flower"]
    check, start = simple_commands(argv(flower["command"]))
    assert check == [
        "python",
        "-m",
        "flask_outbox.credentials",
        "FLOWER_BASIC_AUTH",
    ]  # a weak password: exit 2
    assert start[:5] == ["exec", "celery", "--broker", "$$BROKER_URL", "flower"]  # no app, no app settings
    assert_runnable_with_dash_m("flask_outbox.credentials")
    assert environment(flower)["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")  # required, from .env
    assert "ports" not in flower
    assert "/healthcheck" in " ".join(healthcheck_argv(flower))  # the one page Flower serves without auth


# The RabbitMQ shape: docker-compose.rabbitmq.yml, merged on top of docker-compose.yml by compose.
AMQP_URL = "amqp://app:${RABBITMQ_PASSWORD:?set RABBITMQ_PASSWORD in .env}@rabbitmq:5672/order-outbox"


def test_the_override_adds_only_rabbitmq_and_changes_only_broker_users(
    override: dict[str, Any], services: dict[str, Service]
) -> None:
    assert {key for key in override if not key.startswith("x-")} <= {"services", "volumes"}  # Compose v1 too
    changed = set(override["services"]) - {"rabbitmq"}
    uses_broker = {name for name, service in services.items() if "BROKER_URL" in environment(service)}
    assert changed == uses_broker - {"api"}, "every relay and worker and Flower; the API keeps Redis"
    for name in sorted(changed):
        assert set(override["services"][name]) == {"environment", "depends_on"}, name


@pytest.mark.parametrize(
    "name", ["relay", "relay-2", "worker", "invoice-relay", "invoice-relay-2", "order-consumer", "flower"]
)
def test_every_broker_user_connects_to_rabbitmq_as_app_once_it_is_healthy(
    override: dict[str, Any], name: str
) -> None:
    service = override["services"][name]
    assert environment(service) == {"BROKER_URL": AMQP_URL}
    assert service["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}


def test_the_api_keeps_redis_for_its_rate_limits(
    override: dict[str, Any], services: dict[str, Service]
) -> None:
    """The API publishes nothing: its BROKER_URL locates the rate-limit counters its processes share."""
    assert "api" not in override["services"]
    assert environment(services["api"])["BROKER_URL"].startswith("redis://app:")


def test_rabbitmq_runs_on_the_backend_network_only_with_its_own_user(override: dict[str, Any]) -> None:
    rabbitmq = override["services"]["rabbitmq"]
    assert rabbitmq["image"] == "${RABBITMQ_IMAGE:-rabbitmq:3-management}"  # official, overridable
    assert rabbitmq["networks"] == ["backend"]
    assert "ports" not in rabbitmq, "neither AMQP nor the management UI is published"
    assert rabbitmq["restart"] == "unless-stopped"
    assert rabbitmq["hostname"] == "rabbitmq", "the node's name, and so its database, survive a recreation"
    env = environment(rabbitmq)
    assert env["RABBITMQ_DEFAULT_USER"] == "app", "no guest: the default user replaces it"
    assert SECRET_INTERPOLATION.match(env["RABBITMQ_DEFAULT_PASS"])
    assert AMQP_URL.endswith("/" + env["RABBITMQ_DEFAULT_VHOST"])
    assert "rabbitmq-data:/var/lib/rabbitmq" in rabbitmq["volumes"]
    assert "rabbitmq-data" in override["volumes"]
    assert healthcheck_argv(rabbitmq)[:2] == ["rabbitmq-diagnostics", "-q"]


@pytest.mark.parametrize(("target", "broker"), [("up", "rabbitmq"), ("down", "rabbitmq"), ("up", "")])
def test_make_passes_the_override_with_broker_rabbitmq(target: str, broker: str) -> None:
    dry_run = subprocess.run(
        ["make", "-s", "-n", "-C", str(ROOT), target, f"BROKER={broker}", "COMPOSE=compose"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    files = "-f docker-compose.yml -f docker-compose.rabbitmq.yml"
    assert (files in dry_run.stdout) == (broker == "rabbitmq"), dry_run.stdout

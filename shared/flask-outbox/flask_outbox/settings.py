"""The pipeline's settings, one class per part that reads them; from the environment.

Build them in entry points only and pass them in everywhere else. Every field is an operator-facing
environment variable (its ``validation_alias``) with a description; the table in
``docs/configuration.md`` is rendered from these classes (``python -m flask_outbox.settings
--markdown``). Tuning nobody should need to touch is a named constant (here or in the module that
uses it), not a setting. Relations between settings are checked at start (``OutboxSettings``'s
validator): a bad combination refuses to start, naming both variables.

Parts, by environment prefix: ``PipelineSettings`` (broker, queues, logs, traces: every process),
``RelaySettings`` (``RELAY_*``, ``OUTBOX_*``: the relays), ``ConsumerSettings`` (``WORKER_*``,
``INBOX_*``, ``BROKER_VISIBILITY_TIMEOUT``: the consuming workers); ``OutboxSettings`` is all of them.
An application subclasses it to add its own (its database URLs, its HTTP settings); the defaults
are the embedded mode.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flask_outbox.credentials import check_url_password

__all__ = [
    "LATENESS_BOUND_SECONDS",
    "REDRIVE_MAX",
    "ConsumerSettings",
    "OutboxSettings",
    "PipelineSettings",
    "RelaySettings",
    "markdown_table",
    "restore_sweep_seconds",
    "setting_rows",
]

LATENESS_BOUND_SECONDS = 120.0
"""The project's bound: every order is invoiced at most this long after the last fault (the soak's check)."""

REDRIVE_MAX = 20
"""Re-drives per unanswered message; after that it stays unacknowledged for an operator (``relay status``)."""


def restore_sweep_seconds(visibility_timeout: float) -> float:
    """How often a consuming worker sweeps Redis for expired unacknowledged tasks: a quarter of the
    visibility timeout, 1 to 10 s (``flask_outbox.broker.worker_broker_config`` configures it)."""
    return float(max(1, min(10, int(visibility_timeout) // 4)))


class PipelineSettings(BaseSettings):
    """Every process: where the broker is, the queue names, logs and traces."""

    PART: ClassVar[str] = "pipeline"
    # No input in errors: a refused value would print every setting read, passwords in URLs included.
    model_config = SettingsConfigDict(
        frozen=True, env_file=".env", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    broker_url: str = Field(
        default="",
        validation_alias="BROKER_URL",
        description="The Celery broker: redis:// or rediss:// (the default choice in production), or "
        "amqp:// / amqps:// for RabbitMQ (quorum queues; several as amqp://h1;amqp://h2); "
        "default: a file broker under VAR_DIR",
    )
    queue_prefix: str = Field(
        default="",
        validation_alias="QUEUE_PREFIX",
        description="Prefix of every queue and Redis key, so several pipelines can share one Redis",
    )
    message_signing_key: str = Field(
        default="",
        repr=False,
        validation_alias="MESSAGE_SIGNING_KEY",
        description="HMAC-SHA256 key the relays sign messages with and the consuming workers check them "
        "with: the same secret in each, at least 32 characters; new,old during a rotation (signs with the "
        "first, accepts each); default (file broker only): one generated into VAR_DIR/signing-key",
    )
    var_dir: Path = Field(
        default=Path("var"),
        validation_alias="VAR_DIR",
        description="Embedded mode's folder: SQLite files, the file broker, the generated secret key",
    )
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL", description="Logging level")
    log_format: Literal["console", "json"] = Field(
        default="console",
        validation_alias="LOG_FORMAT",
        description="console (readable) or json (one object a line)",
    )
    otel_traces_exporter: Literal["none", "otlp", "console"] = Field(
        default="none",
        validation_alias="OTEL_TRACES_EXPORTER",
        description="Tracing: off, OTLP over HTTP (OTEL_EXPORTER_OTLP_ENDPOINT) or JSON lines on stdout",
    )
    otel_service_name: str = Field(
        default="", validation_alias="OTEL_SERVICE_NAME", description="Default: the process's role"
    )
    metrics_port: int = Field(
        default=9101,
        ge=0,
        le=65535,
        validation_alias="METRICS_PORT",
        description="Every process's /metrics, /healthz and /readyz, never the API's public port "
        "(0: a free port)",
    )

    def model_post_init(self, _context: object) -> None:
        """Fill the embedded-mode default broker (a file broker under ``var_dir``)."""
        if not self.broker_url:
            # A host name the file transport ignores: without one kombu warns "No hostname was supplied".
            object.__setattr__(self, "broker_url", "filesystem://localhost//")

    @model_validator(mode="after")
    def _refuse_weak_broker_password(self) -> PipelineSettings:
        """A placeholder or short password in ``BROKER_URL`` refuses to start (none at all is allowed)."""
        check_url_password("BROKER_URL", self.broker_url)
        return self

    @property
    def broker_folder(self) -> Path:
        """Where the server-less (filesystem) broker keeps its messages."""
        return self.var_dir.resolve() / "broker"

    def queue(self, name: str) -> str:
        """The broker queue for a contract queue name (a prefix isolates test runs on one Redis)."""
        return f"{self.queue_prefix}{name}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def uses_redis_broker(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://"))

    @property
    def uses_amqp_broker(self) -> bool:
        """RabbitMQ: ``amqp://``, ``amqps://``, or kombu's failover list ``amqp://h1;amqp://h2``."""
        return self.broker_url.startswith(("amqp://", "amqps://"))

    def ensure_var_dir(self) -> None:
        """Create the folders the embedded broker writes to."""
        if self.uses_embedded_broker:
            (self.broker_folder / "control").mkdir(parents=True, exist_ok=True)


class RelaySettings(PipelineSettings):
    """The relays (``python -m <service>.relay``): publishing outbox rows, re-driving unanswered ones.

    Constants, not settings (``flask_outbox.relay.RelayPolicy``'s defaults say why): partitions,
    rebalance and purge periods and batches, re-drive period and batch, the publish attempts before a
    row is parked, messages per batch task, how long published rows are kept.
    """

    PART: ClassVar[str] = "relay"

    relay_batch_size: int = Field(
        default=500,
        ge=1,
        le=10_000,
        validation_alias="RELAY_BATCH_SIZE",
        description="Most rows one claim takes",
    )
    relay_poll_interval: float = Field(
        default=1.0,
        gt=0,
        validation_alias="RELAY_POLL_INTERVAL",
        description="Seconds between claims when no NOTIFY wakes the relay "
        "(SQLite; rows whose retry comes due)",
    )
    relay_max_backoff: float = Field(
        default=30.0,
        gt=0,
        validation_alias="RELAY_MAX_BACKOFF",
        description="Ceiling of a failed row's retry backoff; with RELAY_STALL_SECONDS "
        "under the 120 s lateness bound (checked at start)",
    )
    relay_stall_seconds: float = Field(
        default=30.0,
        ge=5,
        validation_alias="RELAY_STALL_SECONDS",
        description="A relay making no progress this long is unhealthy; live relays take its partitions",
    )
    outbox_redrive_after_seconds: float = Field(
        default=90.0,
        gt=0,
        validation_alias="OUTBOX_REDRIVE_AFTER_SECONDS",
        description="Republish a message that expects an answer if none came this long after "
        "publishing; must exceed BROKER_VISIBILITY_TIMEOUT plus the restore sweep (checked at start)",
    )

    @property
    def outbox_redrive_max(self) -> int:
        """``REDRIVE_MAX`` (a constant since it stopped being a setting)."""
        return REDRIVE_MAX


class ConsumerSettings(PipelineSettings):
    """The consuming workers (``celery -A <service> worker``): retries, redeliveries, the inbox."""

    PART: ClassVar[str] = "consumer"

    worker_max_retries: int = Field(default=8, ge=0, validation_alias="WORKER_MAX_RETRIES")
    worker_max_deliveries: int = Field(default=5, ge=1, validation_alias="WORKER_MAX_DELIVERIES")
    worker_retry_backoff: float = Field(default=1.0, gt=0, validation_alias="WORKER_RETRY_BACKOFF")
    worker_retry_backoff_max: float = Field(default=20.0, gt=0, validation_alias="WORKER_RETRY_BACKOFF_MAX")
    broker_visibility_timeout: int = Field(
        default=60,
        ge=1,
        validation_alias="BROKER_VISIBILITY_TIMEOUT",
        description="Seconds before Redis restores an unacknowledged task (a lost worker's reservations; "
        "RabbitMQ returns them when the worker's channel closes), and the longest a worker's transaction "
        "may sit idle before the database ends it (a hung delivery)",
    )
    inbox_retention_seconds: float = Field(
        default=30 * 24 * 3600,
        gt=0,
        validation_alias="INBOX_RETENTION_SECONDS",
        description="Keep processed-message ids and delivery counts this long; must exceed the longest "
        "redelivery window (re-drive cap x re-drive backoff ceiling), checked at the worker's start",
    )


class OutboxSettings(RelaySettings, ConsumerSettings):
    """Everything the outbox's relay and the inbox's consumer read; the defaults are the embedded mode."""

    PART: ClassVar[str] = "pipeline"

    @model_validator(mode="after")
    def _check_relations(self) -> OutboxSettings:
        """Relations between parts' settings, checked when the settings are read (every process's start)."""
        problems = self.relation_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def relation_problems(self) -> list[str]:
        """Each broken relation, in words that name both variables; empty when all hold.

        The third relation, ``INBOX_RETENTION_SECONDS`` against the longest redelivery, is checked at a
        consuming worker's start (``flask_outbox.retention.check_retention``), where it is reported.
        """
        problems = []
        restored = self.broker_visibility_timeout + restore_sweep_seconds(self.broker_visibility_timeout)
        # RabbitMQ has no visibility timeout: a lost worker's messages come back when its channel closes.
        if not self.uses_amqp_broker and self.outbox_redrive_after_seconds <= restored:
            problems.append(
                f"OUTBOX_REDRIVE_AFTER_SECONDS={self.outbox_redrive_after_seconds:g} must exceed "
                f"BROKER_VISIBILITY_TIMEOUT={self.broker_visibility_timeout:g} plus the restore sweep "
                f"({restored:g} s): a task a killed worker held comes back by then, and re-driving it "
                "first only publishes it twice"
            )
        if self.relay_max_backoff + self.relay_stall_seconds >= LATENESS_BOUND_SECONDS:
            problems.append(
                f"RELAY_MAX_BACKOFF={self.relay_max_backoff:g} plus RELAY_STALL_SECONDS="
                f"{self.relay_stall_seconds:g} must stay under the {LATENESS_BOUND_SECONDS:g} s "
                "lateness bound: "
                "a row that failed during a fault is retried at most the backoff ceiling after it, once a "
                "live relay holds its partition"
            )
        return problems


_CONSUMER_DESCRIPTIONS = {
    "WORKER_MAX_RETRIES": "Retries of a message whose handler failed transiently, before it is dead-lettered",
    "WORKER_MAX_DELIVERIES": "Deliveries of a message that never completes (a worker dies on it) before it "
    "is dead-lettered as poison",
    "WORKER_RETRY_BACKOFF": "First retry delay of a failed task, doubling per retry",
    "WORKER_RETRY_BACKOFF_MAX": "Ceiling of the retry delay (capped at half BROKER_VISIBILITY_TIMEOUT)",
}
"""The table's words for the consumer's fields that carry no description yet (their fields are the
consumer's to fold; a field's own description wins)."""


def setting_rows(*classes: type[BaseSettings]) -> Iterator[tuple[str, str, str, str]]:
    """(variable, default, part, description) of every field, each under the class that declares it."""
    seen: set[str] = set()
    for cls in classes:
        for klass in reversed(cls.__mro__):
            if not (isinstance(klass, type) and issubclass(klass, BaseSettings)):
                continue
            own = inspect.get_annotations(klass)
            for name, field in klass.model_fields.items():
                alias = str(field.validation_alias)
                if name not in own or alias in seen:
                    continue
                seen.add(alias)
                default = field.get_default(call_default_factory=True)
                shown = "(empty)" if default in ("", None) else f"`{default}`"
                description = field.description or _CONSUMER_DESCRIPTIONS.get(alias, "")
                yield alias, shown, str(getattr(klass, "PART", "")), description


def markdown_table(*classes: type[BaseSettings]) -> str:
    """The settings table of ``docs/configuration.md``: one row per variable, grouped by part."""
    rows = sorted(setting_rows(*classes), key=lambda row: (_PART_ORDER.get(row[2], 99), row[0]))
    lines = ["| variable | default | part | description |", "|---|---|---|---|"]
    for name, default, part, text in rows:
        lines.append(f"| `{name}` | {default} | {part} | {text.replace('|', '/')} |")
    return "\n".join(lines)


_PART_ORDER = {"pipeline": 0, "services": 1, "api": 2, "relay": 3, "consumer": 4}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flask_outbox.settings", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print the settings table (Markdown)")
    parser.parse_args(argv)
    print(markdown_table(OutboxSettings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

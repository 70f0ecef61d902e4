"""The pipeline's settings: broker, relay, worker and inbox; read from the environment.

Build it in entry points only and pass it in everywhere else. An application subclasses it to add
its own (its database URLs, its HTTP settings); the defaults are the embedded mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["OutboxSettings"]


class OutboxSettings(BaseSettings):
    """What the outbox's relay and the inbox's consumer read; the defaults are the embedded mode."""

    model_config = SettingsConfigDict(frozen=True, env_file=".env", extra="ignore", populate_by_name=True)

    var_dir: Path = Field(default=Path("var"), validation_alias="VAR_DIR")
    broker_url: str = Field(default="", validation_alias="BROKER_URL")
    queue_prefix: str = Field(default="", validation_alias="QUEUE_PREFIX")

    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    log_format: Literal["console", "json"] = Field(default="console", validation_alias="LOG_FORMAT")

    relay_batch_size: int = Field(default=500, ge=1, le=10_000, validation_alias="RELAY_BATCH_SIZE")
    relay_poll_interval: float = Field(default=1.0, gt=0, validation_alias="RELAY_POLL_INTERVAL")
    relay_max_backoff: float = Field(default=300.0, gt=0, validation_alias="RELAY_MAX_BACKOFF")
    relay_max_attempts: int = Field(default=20, ge=1, validation_alias="RELAY_MAX_ATTEMPTS")
    relay_partitions: int = Field(default=16, ge=1, le=1024, validation_alias="RELAY_PARTITIONS")
    relay_rebalance_interval: float = Field(default=1.0, gt=0, validation_alias="RELAY_REBALANCE_INTERVAL")
    relay_purge_interval: float = Field(default=60.0, gt=0, validation_alias="RELAY_PURGE_INTERVAL")
    relay_purge_batch: int = Field(default=5_000, ge=1, validation_alias="RELAY_PURGE_BATCH")
    relay_stall_seconds: float = Field(
        default=30.0,
        ge=5,
        validation_alias="RELAY_STALL_SECONDS",
        description="A relay making no progress this long is unhealthy; live relays take its partitions",
    )
    relay_metrics_port: int = Field(
        default=9101, ge=0, le=65535, validation_alias="RELAY_METRICS_PORT", description="0: a free port"
    )
    outbox_retention_seconds: float = Field(
        default=7 * 24 * 3600, ge=0, validation_alias="OUTBOX_RETENTION_SECONDS"
    )
    outbox_redrive_after_seconds: float = Field(
        default=60.0,
        gt=0,
        validation_alias="OUTBOX_REDRIVE_AFTER_SECONDS",
        description="Republish a message that expects an answer if none came this long after publishing",
    )
    outbox_redrive_max_interval: float = Field(
        default=3600.0,
        gt=0,
        validation_alias="OUTBOX_REDRIVE_MAX_INTERVAL",
        description="Ceiling of the re-drive backoff (redrive_after * 2**redrives)",
    )
    outbox_redrive_max: int = Field(
        default=20,
        ge=0,
        validation_alias="OUTBOX_REDRIVE_MAX",
        description="Re-drives per message; after that it stays unacknowledged for an operator",
    )
    relay_redrive_interval: float = Field(default=5.0, gt=0, validation_alias="RELAY_REDRIVE_INTERVAL")
    relay_redrive_batch: int = Field(default=5_000, ge=1, validation_alias="RELAY_REDRIVE_BATCH")
    relay_messages_per_task: int = Field(
        default=100,
        ge=1,
        le=1_000,
        validation_alias="RELAY_MESSAGES_PER_TASK",
        description="Most messages a Redis relay packs into one batch task (1: one task per message)",
    )

    worker_max_retries: int = Field(default=8, ge=0, validation_alias="WORKER_MAX_RETRIES")
    worker_max_deliveries: int = Field(default=5, ge=1, validation_alias="WORKER_MAX_DELIVERIES")
    worker_retry_backoff: float = Field(default=1.0, gt=0, validation_alias="WORKER_RETRY_BACKOFF")
    worker_retry_backoff_max: float = Field(default=20.0, gt=0, validation_alias="WORKER_RETRY_BACKOFF_MAX")
    broker_visibility_timeout: int = Field(
        default=60,
        ge=1,
        validation_alias="BROKER_VISIBILITY_TIMEOUT",
        description="Seconds before Redis restores an unacknowledged task (a lost worker's reservations)",
    )
    inbox_retention_seconds: float = Field(
        default=30 * 24 * 3600,
        gt=0,
        validation_alias="INBOX_RETENTION_SECONDS",
        description="Keep processed-message ids and delivery counts this long; must exceed the longest "
        "redelivery window (re-drive cap x re-drive backoff ceiling), checked at the worker's start",
    )
    inbox_prune_interval: float = Field(default=300.0, gt=0, validation_alias="INBOX_PRUNE_INTERVAL")
    inbox_prune_batch: int = Field(default=5_000, ge=1, validation_alias="INBOX_PRUNE_BATCH")

    worker_metrics_port: int = Field(
        default=9102,
        ge=0,
        le=65535,
        validation_alias="WORKER_METRICS_PORT",
        description="A Celery worker's /metrics, /healthz and /readyz (0: a free port)",
    )
    otel_traces_exporter: Literal["none", "otlp", "console"] = Field(
        default="none",
        validation_alias="OTEL_TRACES_EXPORTER",
        description="Tracing: off, OTLP over HTTP (OTEL_EXPORTER_OTLP_ENDPOINT) or JSON lines on stdout",
    )
    otel_service_name: str = Field(
        default="", validation_alias="OTEL_SERVICE_NAME", description="Default: the process's role"
    )

    def model_post_init(self, _context: object) -> None:
        """Fill the embedded-mode default broker (a file broker under ``var_dir``)."""
        if not self.broker_url:
            # A host name the file transport ignores: without one kombu warns "No hostname was supplied".
            object.__setattr__(self, "broker_url", "filesystem://localhost//")

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

    def ensure_var_dir(self) -> None:
        """Create the folders the embedded broker writes to."""
        if self.uses_embedded_broker:
            (self.broker_folder / "control").mkdir(parents=True, exist_ok=True)

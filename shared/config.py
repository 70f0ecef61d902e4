"""The services' settings: the pipeline's (``flask_outbox.OutboxSettings``) plus databases and HTTP."""

from __future__ import annotations

from flask_outbox import OutboxSettings
from pydantic import Field

__all__ = ["Settings"]


class Settings(OutboxSettings):
    """Process configuration. Build it in entry points only and pass it in everywhere else."""

    orders_database_url: str = Field(default="", validation_alias="ORDERS_DATABASE_URL")
    invoices_database_url: str = Field(default="", validation_alias="INVOICES_DATABASE_URL")
    max_request_bytes: int = Field(default=64 * 1024, validation_alias="MAX_REQUEST_BYTES")
    database_pool_size: int = Field(default=5, validation_alias="DATABASE_POOL_SIZE")

    api_keys: str = Field(
        default="",
        validation_alias="API_KEYS",
        description="Comma-separated API keys: raw keys, or 'sha256:<hex digest>' to keep secrets out of env",
    )
    secret_key: str = Field(
        default="",
        validation_alias="SECRET_KEY",
        description="Signs the pipeline page's session cookie; default: one generated into var/secret-key",
    )
    rate_limit: str = Field(default="600 per minute", validation_alias="RATE_LIMIT")
    auth_failure_rate_limit: str = Field(
        default="60 per minute",
        validation_alias="AUTH_FAILURE_RATE_LIMIT",
        description="Requests without a valid API key per client address; checked before the key lookup",
    )
    api_statement_timeout_ms: int = Field(
        default=5000,
        ge=0,
        validation_alias="API_STATEMENT_TIMEOUT_MS",
        description="Postgres statement_timeout on the API's connections (0: none); a timeout is a 503",
    )
    api_pool_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        validation_alias="API_POOL_TIMEOUT_SECONDS",
        description="How long an API request waits for a pooled database connection before a 503",
    )
    rate_limit_storage_url: str = Field(
        default="", validation_alias="RATE_LIMIT_STORAGE_URL", description="Default: BROKER_URL if Redis"
    )
    idempotency_key_ttl_seconds: float = Field(
        default=24 * 3600, gt=0, validation_alias="IDEMPOTENCY_KEY_TTL_SECONDS"
    )
    idempotency_lock_seconds: float = Field(default=60.0, gt=0, validation_alias="IDEMPOTENCY_LOCK_SECONDS")
    idempotency_prune_interval: float = Field(
        default=300.0, gt=0, validation_alias="IDEMPOTENCY_PRUNE_INTERVAL"
    )
    idempotency_prune_batch: int = Field(
        default=1_000,
        ge=1,
        le=100_000,
        validation_alias="IDEMPOTENCY_PRUNE_BATCH",
        description="Expired keys per DELETE; a request prunes one batch in passing, the CLI loops",
    )

    def model_post_init(self, _context: object) -> None:
        """Fill the embedded-mode defaults (SQLite files under ``var_dir``)."""
        super().model_post_init(_context)
        var = self.var_dir.resolve()
        defaults = {
            "orders_database_url": f"sqlite:///{var / 'orders.sqlite3'}",
            "invoices_database_url": f"sqlite:///{var / 'invoices.sqlite3'}",
        }
        for name, value in defaults.items():
            if not getattr(self, name):
                object.__setattr__(self, name, value)

    @property
    def rate_limit_storage(self) -> str:
        """Where rate-limit counters live: shared Redis when the broker is Redis, else this process."""
        if self.rate_limit_storage_url:
            return self.rate_limit_storage_url
        return self.broker_url if self.uses_redis_broker else "memory://"

    def ensure_var_dir(self) -> None:
        """Create the folders the embedded mode writes to."""
        if self.orders_database_url.startswith("sqlite") or self.uses_embedded_broker:
            self.var_dir.mkdir(parents=True, exist_ok=True)
        super().ensure_var_dir()

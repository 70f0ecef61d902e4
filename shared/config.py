"""The services' settings: the pipeline's (``flask_outbox.OutboxSettings``) plus databases and the API.

``Settings`` is what every entry point builds; each field belongs to the part that reads it
(``ApiSettings``: the HTTP API; ``Settings`` itself: the services' databases). The table in
``docs/configuration.md`` is rendered from these classes: ``python tools/settings_table.py``.
"""

from __future__ import annotations

from typing import ClassVar

from flask_outbox import OutboxSettings, PipelineSettings, check_url_password, markdown_table
from pydantic import Field, model_validator

__all__ = ["ApiSettings", "Settings", "settings_markdown"]


class ApiSettings(PipelineSettings):
    """The order API (gunicorn ``order_service.wsgi``): keys, limits, its database pool.

    Constants, not settings (in the modules that use them): the largest request body
    (``order_service.MAX_REQUEST_BYTES``), the Idempotency-Key time to live and claim takeover, the
    idempotency prune period and batch (``order_service.idempotency``); the rate limiter counts in
    Redis when the broker is Redis (``BROKER_URL``), else in the process.
    """

    PART: ClassVar[str] = "api"

    api_keys: str = Field(
        default="",
        validation_alias="API_KEYS",
        description="Comma-separated API keys: raw keys, or 'sha256:<hex digest>' to keep secrets out of env",
    )
    rate_limit: str = Field(
        default="600 per minute",
        validation_alias="RATE_LIMIT",
        description="Requests per API key (limits syntax, e.g. '600 per minute')",
    )
    auth_failure_rate_limit: str = Field(
        default="60 per minute",
        validation_alias="AUTH_FAILURE_RATE_LIMIT",
        description="Requests without a valid API key, per client address and per presented key; over it "
        "such requests get 429 before any lookup (a valid key always passes)",
    )
    trusted_proxy_hops: int = Field(
        default=0,
        ge=0,
        validation_alias="TRUSTED_PROXY_HOPS",
        description="Reverse proxies in front of the API whose X-Forwarded-For/-Proto are believed "
        "(0: the headers are ignored, the peer is the client)",
    )
    secret_key: str = Field(
        default="",
        validation_alias="SECRET_KEY",
        description="Signs the pipeline page's session cookie; required unless ORDERS_DATABASE_URL is "
        "SQLite (the embedded mode, where one is generated into var/secret-key)",
    )
    session_cookie_secure: bool = Field(
        default=False,
        validation_alias="SESSION_COOKIE_SECURE",
        description="Mark the pipeline page's session cookie Secure (browsers then send it over HTTPS only): "
        "set it when the page is served over HTTPS",
    )
    api_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        validation_alias="API_TIMEOUT_SECONDS",
        description="Longest a request waits for a pooled database connection, and longest one SQL statement "
        "runs (Postgres statement_timeout); either is a 503. Also the longest a request's transaction may "
        "sit idle before the database ends it (a hung request thread's row locks)",
    )
    api_pool_size: int = Field(
        default=5,
        ge=1,
        validation_alias="API_POOL_SIZE",
        description="Database connections per API process (about its gunicorn threads)",
    )

    @property
    def rate_limit_storage(self) -> str:
        """Where rate-limit counters live: shared Redis when the broker is Redis, else this process."""
        return self.broker_url if self.uses_redis_broker else "memory://"


class Settings(OutboxSettings, ApiSettings):
    """Process configuration. Build it in entry points only and pass it in everywhere else."""

    PART: ClassVar[str] = "services"

    orders_database_url: str = Field(
        default="",
        validation_alias="ORDERS_DATABASE_URL",
        description="The order API's, order relay's and order consumer's database; "
        "default: SQLite under VAR_DIR",
    )
    invoices_database_url: str = Field(
        default="",
        validation_alias="INVOICES_DATABASE_URL",
        description="The invoice worker's and invoice relay's database; default: SQLite under VAR_DIR",
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

    @model_validator(mode="after")
    def _refuse_weak_database_passwords(self) -> Settings:
        """A placeholder or short password in a database URL refuses to start (none at all is allowed)."""
        check_url_password("ORDERS_DATABASE_URL", self.orders_database_url)
        check_url_password("INVOICES_DATABASE_URL", self.invoices_database_url)
        return self

    def ensure_var_dir(self) -> None:
        """Create the folders the embedded mode writes to."""
        if self.orders_database_url.startswith("sqlite") or self.uses_embedded_broker:
            self.var_dir.mkdir(parents=True, exist_ok=True)
        super().ensure_var_dir()


def settings_markdown() -> str:
    """The table of every setting the services read (``docs/configuration.md``, between its markers)."""
    return markdown_table(Settings)

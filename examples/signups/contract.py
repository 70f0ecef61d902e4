"""What the app sends and the worker reads: one topic, its payload and where it is delivered."""

from __future__ import annotations

from pathlib import Path

from flask_outbox import OutboxSettings, Route
from pydantic import BaseModel, Field

USER_SIGNED_UP = "user.signed_up"
ROUTES = {USER_SIGNED_UP: Route(task="signups.send_welcome_mail", queue="signups")}


class UserSignedUp(BaseModel):
    user_id: int
    email: str


class SignupSettings(OutboxSettings):
    """The library's settings (broker, relay, worker) and this app's database."""

    database_url: str = Field(
        default_factory=lambda: f"sqlite:///{Path('signups.db').resolve()}",  # absolute: one file for all
        validation_alias="SIGNUPS_DATABASE_URL",
    )

"""The web app: ``POST /signups`` creates a user; a receiver of ``user_signed_up`` queues the mail.

``flask --app examples.signups.app init-db`` creates the tables; ``flask --app examples.signups.app run``.
"""

from __future__ import annotations

from typing import Any

from blinker import Namespace
from flask import Flask, request

from examples.signups.contract import USER_SIGNED_UP, SignupSettings, UserSignedUp
from examples.signups.models import User, db, outbox

user_signed_up = Namespace().signal("user-signed-up")


@user_signed_up.connect
def queue_welcome_mail(sender: Flask, *, user: User, **_: Any) -> None:
    """In the sign-up's transaction: committed with the user, or not at all."""
    message = UserSignedUp(user_id=user.id, email=user.email)
    outbox.add(USER_SIGNED_UP, message.model_dump(), aggregate_type="user", aggregate_id=str(user.id))


def create_app(settings: SignupSettings | None = None, **config: Any) -> Flask:
    settings = settings or SignupSettings()
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=settings.database_url, **config)
    db.init_app(app)
    outbox.init_app(app)

    @app.post("/signups")
    def sign_up() -> tuple[dict[str, Any], int]:
        user = User(email=str(request.get_json()["email"]))
        db.session.add(user)
        db.session.flush()  # the user's id, for the message
        user_signed_up.send(app, user=user)
        db.session.commit()
        return {"id": user.id, "email": user.email}, 201

    @app.cli.command("init-db")
    def init_db() -> None:
        db.create_all()

    return app

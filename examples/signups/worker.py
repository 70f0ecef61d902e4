"""The worker: ``celery -A examples.signups.worker worker -Q signups`` sends each welcome mail once."""

from __future__ import annotations

import structlog
from flask_outbox import Delivery, Handler, InboxWorker
from sqlalchemy.orm import Session

from examples.signups.contract import ROUTES, USER_SIGNED_UP, SignupSettings, UserSignedUp
from examples.signups.models import WelcomeMail, inbox

log = structlog.get_logger(__name__)


def send_welcome_mail(session: Session, delivery: Delivery[UserSignedUp]) -> str:
    """In the consumer's transaction, with the message's inbox row: a redelivery finds it and stops."""
    signup = delivery.message
    session.add(WelcomeMail(user_id=signup.user_id, email=signup.email, message_id=delivery.message_id))
    log.info("welcome_mail.sent", user_id=signup.user_id, email=signup.email)
    return "sent"


settings = SignupSettings()
route = ROUTES[USER_SIGNED_UP]
worker = InboxWorker("signups-worker", settings, settings.database_url, inbox, queue=route.queue)
worker.register(route, Handler(USER_SIGNED_UP, UserSignedUp.model_validate, send_welcome_mail))
app = worker.app

"""The app's tables: users, welcome mails (one per user), the outbox and the worker's inbox."""

from __future__ import annotations

import uuid

from flask_outbox import Outbox, define_inbox
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
outbox = Outbox(db=db)  # the `outbox` table, on db.metadata
inbox = define_inbox(db.metadata)  # what the worker has already applied


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)


class WelcomeMail(Base):
    __tablename__ = "welcome_mails"
    user_id: Mapped[int] = mapped_column(primary_key=True)  # UNIQUE: one welcome mail per user
    email: Mapped[str] = mapped_column(String(254))
    message_id: Mapped[uuid.UUID]

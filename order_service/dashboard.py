"""The live pipeline page (``GET /dashboard``): server-rendered HTML that polls ``/dashboard/data``.

Behind the order endpoints' API keys, without putting a key in a URL: a login form takes the key
(judged as a Bearer key is, throttles included: ``auth.presented_key_valid``) and keeps only its
SHA-256 digest and a random session id in Flask's signed session cookie. Every request re-checks the
key (a revoked key logs the page out) and the session id: signing out records the id as signed out
in the orders database (``models.SignedOutSession``) for as long as a cookie carrying it could still
be presented, so a cookie captured before sign-out is refused after it, by every API process. The
form and logout carry a per-session CSRF token. The cookie is ``Secure`` when
``SESSION_COOKIE_SECURE`` is set, and signed with ``SECRET_KEY``, or, in the embedded mode only,
with a key generated once into ``var/secret-key`` (so every gunicorn worker of the host signs
alike). Charts use uPlot, vendored under ``static/vendor`` (no CDN, no build step); a strict
Content-Security-Policy allows only this origin's scripts and styles.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar, cast

import structlog
from flask import Blueprint, Flask, Response, jsonify, redirect, render_template, request, session, url_for
from flask_outbox import utcnow
from sqlalchemy import delete
from werkzeug.wrappers import Response as BaseResponse

from order_service.auth import client_id, digest, key_valid, presented_key_valid
from order_service.extensions import db
from order_service.models import SignedOutSession
from order_service.pipeline import COUNT_CAP, read_snapshot
from order_service.problems import problem
from shared.config import Settings

__all__ = ["MissingSecretKey", "bp", "init_dashboard", "require_secret_key"]

log = structlog.get_logger(__name__)

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

POLL_SECONDS = 2
SESSION_HOURS = 8
_KEY = "key_sha256"
_SESSION_ID = "sid"
_CSRF = "csrf"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

View = TypeVar("View", bound=Callable[..., Any])


def _sign_out(session_id: str) -> None:
    """Record the session as signed out, for every API process; prune sign-outs past the session lifetime.

    Its own short transaction, like an Idempotency-Key claim: nothing else is written on this request.
    """
    expired = utcnow() - timedelta(hours=SESSION_HOURS)
    db.session.execute(delete(SignedOutSession).where(SignedOutSession.signed_out_at < expired))
    db.session.merge(SignedOutSession(session_id=session_id, signed_out_at=utcnow()))
    db.session.commit()


def _signed_out(session_id: str) -> bool:
    return db.session.get(SignedOutSession, session_id) is not None


class MissingSecretKey(ValueError):
    """``SECRET_KEY`` is empty outside the embedded mode; the API refuses to serve without it."""


def require_secret_key(settings: Settings) -> None:
    """Refuse to serve the page outside the embedded mode without ``SECRET_KEY`` (``wsgi``, at start).

    Only the embedded mode (SQLite: one host) may generate one: elsewhere API processes on several
    hosts serve the page, and a session signed by one must verify on all. Commands (migrations,
    ``api-keys``) build the app too but serve no page, so ``create_app`` itself does not ask for it.
    """
    if not settings.secret_key and not _embedded(settings):
        raise MissingSecretKey(
            "SECRET_KEY is required when ORDERS_DATABASE_URL is not SQLite: every API process must sign the "
            "pipeline page's sessions with the same key. Make one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )


def _embedded(settings: Settings) -> bool:
    return settings.orders_database_url.startswith("sqlite")


def _secret_key(settings: Settings) -> str:
    """``SECRET_KEY``; unset, in the embedded mode one generated atomically into ``var/secret-key``."""
    if settings.secret_key:
        return settings.secret_key
    if not _embedded(settings):
        return secrets.token_urlsafe(48)  # a command's app, which serves no page (see require_secret_key)
    path = settings.var_dir / "secret-key"
    try:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            draft = path.with_name(f".secret-key.{os.getpid()}")
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48) + "\n")
            try:
                os.link(draft, path)  # all or nothing: a concurrent worker reads a whole key
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        return path.read_text().strip()
    except OSError as error:
        log.warning("dashboard.secret_key_per_process", error=str(error), hint="set SECRET_KEY")
        return secrets.token_urlsafe(48)


def _csrf_token() -> str:
    token = session.get(_CSRF)
    if not isinstance(token, str):
        token = session[_CSRF] = secrets.token_urlsafe(32)
    return token


def _csrf_ok() -> bool:
    sent, expected = request.form.get(_CSRF, ""), session.get(_CSRF)
    return isinstance(expected, str) and hmac.compare_digest(sent.encode(), expected.encode())


def _signed_in() -> bool:
    key_hash, session_id = session.get(_KEY), session.get(_SESSION_ID)
    if (
        isinstance(key_hash, str)
        and isinstance(session_id, str)
        and not _signed_out(session_id)
        and key_valid(key_hash)
    ):
        return True
    if key_hash is not None:
        session.clear()  # revoked or signed out since: the page logs out
    return False


def _page_login_required(view: View) -> View:
    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs) if _signed_in() else redirect(url_for("dashboard.login"))

    return cast(View, guarded)


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "dashboard.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("")
@_page_login_required
def page() -> str:
    snapshot = read_snapshot(db.session())
    return render_template(
        "dashboard/page.html",
        data=snapshot.to_json(),
        count_cap=COUNT_CAP,
        poll_ms=POLL_SECONDS * 1000,
        csrf_token=_csrf_token(),
    )


@bp.get("/data")
def data() -> Response:
    """The page's poll: 401 (not a redirect) once signed out, so the script can send it to the login."""
    if not _signed_in():
        return problem(401, "Unauthorized", "Sign in at /dashboard/login.")
    return jsonify(read_snapshot(db.session()).to_json())


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | str | tuple[str, int]:
    if request.method == "GET":
        return render_template("dashboard/login.html", csrf_token=_csrf_token(), error=None)
    if not _csrf_ok():
        log.info("dashboard.csrf_refused")
        return render_template("dashboard/login.html", csrf_token=_csrf_token(), error="Form expired"), 400
    key_hash = digest(request.form.get("key", "").strip())
    if not presented_key_valid(key_hash):
        log.info("dashboard.key_refused", client=client_id(key_hash))
        error = "This API key is not valid."
        return render_template("dashboard/login.html", csrf_token=_csrf_token(), error=error), 401
    session.clear()  # a fresh session (and CSRF token) for the signed-in user
    session.permanent = True
    session[_KEY] = key_hash
    session[_SESSION_ID] = secrets.token_urlsafe(16)
    log.info("dashboard.signed_in", client=client_id(key_hash))
    return redirect(url_for("dashboard.page"))


@bp.post("/logout")
def logout() -> BaseResponse:
    if not _csrf_ok():
        return problem(400, "Bad Request", "Missing or stale form token.")
    session_id = session.get(_SESSION_ID)
    if isinstance(session_id, str):
        _sign_out(session_id)
    session.clear()
    return redirect(url_for("dashboard.login"))


@bp.app_template_filter("money")
def _money(amount: int) -> str:
    """Integer minor units as ``major.minor`` (two decimals), without going through a float."""
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 100)
    return f"{sign}{major}.{minor:02d}"


def init_dashboard(app: Flask, settings: Settings) -> None:
    """Register the page and its signed, same-site, HTTP-only (and, if configured, Secure) session cookie."""
    app.secret_key = _secret_key(settings)
    app.config.update(
        SESSION_COOKIE_NAME="orders_dashboard",
        SESSION_COOKIE_PATH="/dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
    )
    app.register_blueprint(bp)

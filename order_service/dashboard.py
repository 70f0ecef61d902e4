"""The live pipeline page (``GET /dashboard``): server-rendered HTML that polls ``/dashboard/data``.

Behind the order endpoints' API keys, without putting a key in a URL: a login form takes the key
and keeps only its SHA-256 digest in Flask's signed session cookie, re-checked on every request
(a revoked key logs the page out). The form and logout carry a per-session CSRF token. The cookie
is signed with ``SECRET_KEY``, or else with a key generated once into ``var/secret-key`` so every
gunicorn worker of a host signs alike. Charts use uPlot, vendored under ``static/vendor`` (no CDN,
no build step); a strict Content-Security-Policy allows only this origin's scripts and styles.
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
from werkzeug.wrappers import Response as BaseResponse

from order_service.auth import client_id, digest, known_key
from order_service.extensions import db
from order_service.pipeline import COUNT_CAP, read_snapshot
from order_service.problems import problem
from shared.config import Settings

__all__ = ["bp", "init_dashboard"]

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
_CSRF = "csrf"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

View = TypeVar("View", bound=Callable[..., Any])


def _secret_key(settings: Settings) -> str:
    """``SECRET_KEY``, or one generated atomically into ``var/secret-key`` (shared by the host's workers)."""
    if settings.secret_key:
        return settings.secret_key
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
    key_hash = session.get(_KEY)
    if isinstance(key_hash, str) and known_key(key_hash):
        return True
    if key_hash is not None:
        session.pop(_KEY)  # revoked since: the page logs out
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
    if not known_key(key_hash):
        log.info("dashboard.key_refused", client=client_id(key_hash))
        error = "This API key is not valid."
        return render_template("dashboard/login.html", csrf_token=_csrf_token(), error=error), 401
    session.clear()  # a fresh session (and CSRF token) for the signed-in user
    session.permanent = True
    session[_KEY] = key_hash
    log.info("dashboard.signed_in", client=client_id(key_hash))
    return redirect(url_for("dashboard.page"))


@bp.post("/logout")
def logout() -> BaseResponse:
    if not _csrf_ok():
        return problem(400, "Bad Request", "Missing or stale form token.")
    session.clear()
    return redirect(url_for("dashboard.login"))


@bp.app_template_filter("money")
def _money(amount: int) -> str:
    """Integer minor units as ``major.minor`` (two decimals), without going through a float."""
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 100)
    return f"{sign}{major}.{minor:02d}"


def init_dashboard(app: Flask, settings: Settings) -> None:
    """Register the page and its signed, same-site, HTTP-only session cookie."""
    app.secret_key = _secret_key(settings)
    app.config.update(
        SESSION_COOKIE_NAME="orders_dashboard",
        SESSION_COOKIE_PATH="/dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
    )
    app.register_blueprint(bp)

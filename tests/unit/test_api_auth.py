"""API keys: Bearer tokens checked against stored digests; health and docs stay open."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from order_service import create_app
from order_service.auth import MIN_RAW_KEY_LENGTH, KeyRing, WeakApiKey, digest
from order_service.extensions import db
from shared.config import Settings
from tests.unit.conftest import API_KEY, app_on_sqlite

LINE = {"sku": "A-1", "quantity": 1, "unit_amount": 5}
ORDER = {"customer_id": "cus_1", "currency": "EUR", "lines": [LINE]}


@pytest.fixture
def anonymous(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer    ", None),
        (f"Basic {API_KEY}", None),
        ("Bearer osk_not-a-key-we-know", "invalid_token"),
        (f"Bearer {API_KEY}x", "invalid_token"),
        (f"Bearer {digest(API_KEY)}", "invalid_token"),
    ],
)
@pytest.mark.parametrize(("method", "path"), [("post", "/orders"), ("get", "/orders"), ("get", "/orders/x")])
def test_missing_or_wrong_keys_get_401_with_a_challenge(
    anonymous: FlaskClient, method: str, path: str, authorization: str | None, error: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}

    response = anonymous.open(path, method=method.upper(), json=ORDER, headers=headers)

    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="orders"')
    assert (f'error="{error}"' in challenge) == (error is not None)
    assert API_KEY not in response.get_data(as_text=True)


def test_the_scheme_is_case_insensitive(anonymous: FlaskClient) -> None:
    assert anonymous.get("/orders", headers={"Authorization": f"bearer {API_KEY}"}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs/", "/docs/swagger"])
def test_health_and_docs_need_no_key(anonymous: FlaskClient, path: str) -> None:
    assert anonymous.get(path).status_code == 200


@pytest.fixture
def digest_app(sqlite_settings: Settings) -> Iterator[Flask]:
    """API_KEYS holding a digest and a raw key, with stray spaces."""
    keys = f" sha256:{digest('osk_from-a-digest').upper()} , osk_raw-key ,"
    yield from app_on_sqlite(sqlite_settings.model_copy(update={"api_keys": keys}))


@pytest.mark.parametrize("key", ["osk_from-a-digest", "osk_raw-key"])
def test_api_keys_may_hold_digests_or_raw_keys(digest_app: Flask, key: str) -> None:
    response = digest_app.test_client().get("/orders", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_keys_created_in_the_database_work_until_revoked(app: Flask, anonymous: FlaskClient) -> None:
    runner = app.test_cli_runner()
    created = runner.invoke(args=["api-keys", "create", "mobile-app"])
    assert created.exit_code == 0
    headers = {"Authorization": f"Bearer {created.output.strip()}"}
    assert anonymous.get("/orders", headers=headers).status_code == 200

    assert runner.invoke(args=["api-keys", "revoke", "mobile-app"]).exit_code == 0

    assert anonymous.get("/orders", headers=headers).status_code == 401


def test_the_digest_command_reads_the_key_from_stdin_and_prints_an_api_keys_entry(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["api-keys", "digest"], input="osk_abc\n")

    assert result.exit_code == 0
    assert result.output.strip() == f"sha256:{digest('osk_abc')}"


def test_the_digest_command_takes_no_key_on_its_command_line(app: Flask) -> None:
    """A key in argv lands in the shell history and in every process listing."""
    runner = app.test_cli_runner()

    as_argument = runner.invoke(args=["api-keys", "digest", "osk_abc"], input="")
    empty = runner.invoke(args=["api-keys", "digest"], input="\n")

    assert as_argument.exit_code == 2
    assert digest("osk_abc") not in as_argument.output
    assert empty.exit_code == 1
    assert "no key" in empty.output


def test_embedded_mode_without_keys_shares_one_generated_dev_key(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    apps = [next(app_on_sqlite(settings)), next(app_on_sqlite(settings))]  # two gunicorn workers
    key = (tmp_path / "var" / "dev-api-key").read_text().strip()

    assert key.startswith("osk_")
    assert oct((tmp_path / "var" / "dev-api-key").stat().st_mode & 0o777) == "0o600"
    for app in apps:
        assert app.test_client().get("/orders", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        with app.app_context():
            db.engine.dispose()


def test_production_mode_never_generates_a_dev_key(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path / "var", orders_database_url="postgresql+psycopg://db.invalid/orders"
    )

    ring = KeyRing.from_settings(settings)

    assert ring.digests == ()
    assert ring.dev_key is None
    assert not (tmp_path / "var" / "dev-api-key").exists()


PRODUCTION_DB = "postgresql+psycopg://db.invalid/orders"
STRONG = "osk_" + "Zq8-" * 10  # 44 characters


def _production(tmp_path: Path, api_keys: str) -> Settings:
    return Settings(var_dir=tmp_path / "var", orders_database_url=PRODUCTION_DB, api_keys=api_keys)


@pytest.mark.parametrize(
    "weak",
    [
        pytest.param("osk_short-but-random-7f3a", id="shorter than 32"),
        pytest.param("change-me-to-a-long-random-key", id="the old .env.example value"),
        pytest.param("change-me-to-a-long-random-key-of-at-least-32", id="a long placeholder"),
        pytest.param("your-api-key-goes-here-0000000000000", id="your-api-key"),
        pytest.param("x" * 64, id="one character repeated"),
    ],
)
def test_a_guessable_raw_key_refuses_to_start_outside_the_embedded_mode(tmp_path: Path, weak: str) -> None:
    settings = _production(tmp_path, f"{STRONG},{weak}")

    with pytest.raises(WeakApiKey, match="API_KEYS entry 2") as refused:
        create_app(settings)

    assert weak not in str(refused.value)  # the message never leaks the key into logs
    assert "secrets.token_urlsafe" in str(refused.value)


def test_a_malformed_digest_refuses_to_start_in_any_mode(tmp_path: Path) -> None:
    with pytest.raises(WeakApiKey, match="64 hex digits"):
        KeyRing.from_settings(Settings(var_dir=tmp_path / "var", api_keys="sha256:abc"))


def test_strong_keys_and_digests_start_in_production_and_short_keys_in_embedded_mode(tmp_path: Path) -> None:
    ring = KeyRing.from_settings(_production(tmp_path, f"{STRONG}, sha256:{digest('anything')}"))
    assert ring.digests == (digest(STRONG), digest("anything"))
    assert len(STRONG) >= MIN_RAW_KEY_LENGTH

    embedded = KeyRing.from_settings(Settings(var_dir=tmp_path / "var", api_keys="osk_dev"))
    assert embedded.digests == (digest("osk_dev"),)


def test_env_example_ships_no_usable_key(tmp_path: Path) -> None:
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text(encoding="utf-8")
    values = re.findall(r"^API_KEYS=(.*)$", example, re.MULTILINE)
    assert len(values) == 1

    if values[0].strip():  # empty: compose refuses to start (API_KEYS:?); anything else must be refused here
        with pytest.raises(WeakApiKey):
            KeyRing.from_settings(_production(tmp_path, values[0]))

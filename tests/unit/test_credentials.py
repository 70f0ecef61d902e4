"""Guessable database and broker passwords refuse to start, naming the variable and never the password;
URLs without one (local trust or peer authentication, the embedded mode) start as before."""

from __future__ import annotations

import secrets

import pytest
from flask_outbox import PipelineSettings, WeakCredential, check_url_password
from flask_outbox.credentials import MIN_PASSWORD_LENGTH, main
from pydantic import ValidationError

from shared.config import Settings

STRONG = "q8Zr-Lm4tWx7Pc2-Hn6Vd9Ks3Bf5Jy1Gw0Tx"
"""A fixed strong password: parametrized test ids must be the same in every xdist worker."""
PLACEHOLDERS = ["change-me", "CHANGE_ME_PLEASE_0123456789", "replace-me", "password", "my-secret-value",
                "example-example-example", "your-password-here-0000", "x" * 40]  # fmt: skip
URL_VARIABLES = {
    "ORDERS_DATABASE_URL": "postgresql+psycopg://orders_app:{}@postgres:5432/orders",
    "INVOICES_DATABASE_URL": "postgresql+psycopg://invoices_app:{}@postgres:5432/invoices",
    "BROKER_URL": "redis://app:{}@redis:6379/0",
}


def refusal(variable: str, url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The message ``Settings`` refuses ``url`` in ``variable`` with, read from the environment."""
    monkeypatch.setenv(variable, url)
    with pytest.raises(ValidationError) as refused:
        Settings()
    return str(refused.value)


@pytest.mark.parametrize("variable", sorted(URL_VARIABLES))
@pytest.mark.parametrize("password", PLACEHOLDERS)
def test_a_placeholder_password_refuses_to_start(
    variable: str, password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = refusal(variable, URL_VARIABLES[variable].format(password), monkeypatch)
    assert f"the password in {variable} is a placeholder" in message
    assert f":{password}@" not in message
    assert "secrets.token_urlsafe(32)" in message  # how to make a good one


@pytest.mark.parametrize("variable", sorted(URL_VARIABLES))
def test_a_short_password_refuses_to_start(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    short = STRONG[: MIN_PASSWORD_LENGTH - 1]
    message = refusal(variable, URL_VARIABLES[variable].format(short), monkeypatch)
    assert f"the password in {variable} is 15 characters; a password needs at least 16" in message
    assert short not in message


def test_every_url_of_a_broker_failover_list_is_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu reads ``url1;url2;url3`` as one broker on three nodes: a weak password on any node refuses."""
    node = "amqp://app:{}@rabbit-{}:5672/pipeline"
    strong = [node.format(STRONG, n) for n in (1, 2, 3)]
    weak_second = ";".join([strong[0], node.format("change-me", 2), strong[2]])
    message = refusal("BROKER_URL", weak_second, monkeypatch)
    assert "the password in BROKER_URL (URL 2 of 3) is a placeholder" in message
    assert "change-me" not in message

    monkeypatch.setenv("BROKER_URL", ";".join(strong))
    assert Settings().broker_url == ";".join(strong)


def test_a_percent_encoded_password_is_judged_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal("BROKER_URL", "redis://app:change%2Dme@redis:6379/0", monkeypatch)
    assert "the password in BROKER_URL is a placeholder" in message


def test_the_refusal_prints_no_other_setting_either(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic would echo the whole input (every URL read) after the reason; the settings hide it."""
    monkeypatch.setenv("ORDERS_DATABASE_URL", URL_VARIABLES["ORDERS_DATABASE_URL"].format(STRONG))
    message = refusal("BROKER_URL", "redis://app:change-me@redis:6379/0", monkeypatch)
    assert STRONG not in message
    assert "change-me" not in message


def test_strong_passwords_and_urls_without_one_start(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, url in URL_VARIABLES.items():
        monkeypatch.setenv(variable, url.format(STRONG))
    settings = Settings()
    assert STRONG in settings.broker_url
    monkeypatch.undo()
    Settings(
        orders_database_url="postgresql+psycopg://postgres@127.0.0.1:5432/orders",  # trust auth, as the tests
        invoices_database_url="postgresql+psycopg:///invoices?host=/run/postgresql",  # peer auth, a socket
        broker_url="redis://127.0.0.1:6379/0",
    )
    Settings()  # the embedded mode: SQLite files and the file broker


def test_the_pipeline_settings_alone_check_the_broker() -> None:
    """Relays and workers of other applications build the library's settings, not the services'."""
    with pytest.raises(ValidationError, match="the password in BROKER_URL is 8 characters"):
        PipelineSettings(broker_url="redis://:hunter22@redis:6379/0")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "FLOWER_BASIC_AUTH is empty"),
        ("ops", "FLOWER_BASIC_AUTH entry 1 is not user:password"),
        ("ops:change-me", "the password of FLOWER_BASIC_AUTH entry 1 is a placeholder"),
        (f"ops:{STRONG},dev:short", "the password of FLOWER_BASIC_AUTH entry 2 is 5 characters"),
    ],
)
def test_flower_refuses_to_start_with_a_guessable_basic_auth(
    value: str, reason: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLOWER_BASIC_AUTH", value)
    assert main(["FLOWER_BASIC_AUTH"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to start: {reason}" in err
    assert "change-me" not in err
    assert "short" not in err


def test_flower_starts_with_strong_basic_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_BASIC_AUTH", f"ops:{STRONG},dev:{secrets.token_urlsafe(32)}")
    assert main(["FLOWER_BASIC_AUTH"]) == 0


def test_applications_check_their_own_urls_with_the_same_rule() -> None:
    with pytest.raises(WeakCredential, match="the password in LEDGER_DATABASE_URL is a placeholder"):
        check_url_password("LEDGER_DATABASE_URL", "postgresql://ledger:replace-me@db/ledger")
    check_url_password("LEDGER_DATABASE_URL", f"postgresql://ledger:{STRONG}@db/ledger")

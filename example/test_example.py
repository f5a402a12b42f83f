"""Smoke tests for the demo site: ``.venv/bin/python -m pytest -q example/test_example.py``.

Runs against the engine named by CSESSIONS_ENGINE (default: csessions' signed cookies).
"""

import os
import re
import sys
from pathlib import Path

import pytest

EXAMPLE_DIR = Path(__file__).resolve().parent
for path in (str(EXAMPLE_DIR.parent), str(EXAMPLE_DIR)):  # csessions, site_example
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ["DJANGO_SETTINGS_MODULE"] = "site_example.settings"

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment, teardown_test_environment  # noqa: E402

COOKIE_ENGINE = "signed_cookies" in settings.SESSION_ENGINE
CSESSIONS_COOKIES = settings.SESSION_ENGINE == "csessions.backends.signed_cookies"


@pytest.fixture(scope="module", autouse=True)
def test_environment():
    setup_test_environment()  # allows the "testserver" host, records rendered contexts
    yield
    teardown_test_environment()


@pytest.fixture
def client():
    return Client()


def visits(response):
    return int(re.search(rb'<strong id="visits">(\d+)</strong>', response.content).group(1))


def test_home_counts_visits_and_shows_engine(client):
    for expected in (1, 2, 3):
        response = client.get("/")
        assert response.status_code == 200
        assert visits(response) == expected
    assert settings.SESSION_ENGINE.encode() in response.content
    assert response.context["expiry_age"] == settings.SESSION_COOKIE_AGE


def test_cart_values_are_escaped(client, monkeypatch):
    from site_example import views

    monkeypatch.setattr(views, "CART_ITEMS", ["<b>kiwi</b>"])
    for _ in range(3):
        assert client.post("/cart/add").status_code == 302
    response = client.get("/")
    assert response.context["cart"] == ["<b>kiwi</b>"] * 3
    assert b"<b>kiwi" not in response.content
    assert b"&lt;b&gt;kiwi&lt;/b&gt;" in response.content


def test_reset_starts_a_new_session(client):
    client.get("/")
    client.get("/")
    client.post("/cart/add")
    response = client.post("/reset", follow=True)
    assert response.redirect_chain == [("/", 302)]
    assert visits(response) == 1
    assert response.context["cart"] == []


def test_counter_and_nosession(client):
    assert [client.get("/counter").content for _ in range(3)] == [b"1\n", b"2\n", b"3\n"]
    response = client.get("/nosession")
    assert (response.content, response["Content-Type"]) == (b"ok\n", "text/plain")
    assert "Cookie" not in response.get("Vary", "")


@pytest.mark.skipif(not CSESSIONS_COOKIES, reason="SessionCookieTooLarge is csessions' cookie engine")
def test_big_shows_the_error_and_keeps_the_session(client):
    client.get("/")
    response = client.get("/big")
    assert response.status_code == 200
    message = response.context["big_error"]
    assert "over the 4096-byte limit" in message
    assert re.search(r"would be \d{4,} bytes", message)
    assert b'id="big-error"' in response.content
    assert len(client.cookies[settings.SESSION_COOKIE_NAME].value) < 4096
    assert visits(client.get("/")) == 2  # the value was dropped, the session survived


@pytest.mark.skipif(CSESSIONS_COOKIES, reason="covered by the test above")
def test_big_is_stored_without_error_elsewhere(client):
    response = client.get("/big")
    assert response.status_code == 200
    assert response.context.get("big_error") is None
    assert "big" in dict(response.context["items"])
    if COOKIE_ENGINE:
        assert "browsers drop cookies" in response.context["big_note"]

"""A realistic app answers under the worker exactly as under gunicorn's sync worker.

examples/realistic: Flask-Login, Flask-WTF forms with CSRF, Flask-SQLAlchemy
on SQLite and the session, with the dashboard, the item form's handler and
the JSON API ``async def`` (behind ``login_required``) and the rest sync.
Served once by gunicorn's sync worker (where Flask runs the async views
through asgiref) and once by ``flask_async_worker.UVLoopWorker``, each with
a fresh database, the same scripted session must get the same answers:
status, Location and body, after removing the CSRF token values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import EXAMPLES
from .flaskr_support import Pair

APP = "realistic:create_app()"
_FORM_TOKEN = re.compile(
    r'(<input id="csrf_token" name="csrf_token" type="hidden" value=")([^"]*)"'
)
_META_TOKEN = re.compile(r'(<meta name="csrf-token" content=")([^"]*)"')

#: ``Script.post_json``'s default: send the token the server gave this side.
OWN = "<own token>"

pytestmark = pytest.mark.timeout(90)


def without_tokens(text: str) -> str:
    return _META_TOKEN.sub(r'\1<csrf>"', _FORM_TOKEN.sub(r'\1<csrf>"', text))


def form_token(response: httpx.Response) -> str:
    match = _FORM_TOKEN.search(response.text)
    assert match, response.text
    return match.group(2)


def meta_token(response: httpx.Response) -> str:
    match = _META_TOKEN.search(response.text)
    assert match, response.text
    return match.group(2)


class Script:
    """The scripted session; each side keeps the CSRF token its server gave it."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.tokens = ["", ""]

    def get_form(self, label: str, url: str) -> None:
        answers = self.pair.request(label, "GET", url)
        self.tokens = [form_token(r) for r in answers]

    def submit(self, label: str, url: str, fields: dict[str, str], token: bool = True) -> None:
        def kwargs(side: int) -> dict[str, Any]:
            data = dict(fields)
            if token:
                data["csrf_token"] = self.tokens[side]
            return {"data": data}

        self.pair.request_each(label, "POST", url, kwargs)

    def post_json(self, label: str, url: str, body: Any, csrf: str | None = OWN) -> None:
        """POST JSON with the side's own token in X-CSRFToken (or ``csrf``; None: no header)."""

        def kwargs(side: int) -> dict[str, Any]:
            token = self.tokens[side] if csrf is OWN else csrf
            return {"json": body, "headers": {} if token is None else {"X-CSRFToken": token}}

        self.pair.request_each(label, "POST", url, kwargs)

    def run(self) -> None:
        get = self.pair.request
        get("home, anonymous", "GET", "/")
        get("dashboard, anonymous", "GET", "/dashboard")
        get("login page after redirect", "GET", "/login?next=/dashboard")
        get("api, anonymous", "GET", "/api/items")
        get("no such page", "GET", "/nowhere")

        self.get_form("register form", "/register")
        account = {"username": "alice", "password": "s3cret!", "confirm": "s3cret!"}
        self.submit("register without CSRF token", "/register", account, token=False)
        self.submit(
            "register, forged CSRF token", "/register", {**account, "csrf_token": "x"}, token=False
        )
        self.submit("register, passwords differ", "/register", {**account, "confirm": "other"})
        self.submit("register alice", "/register", account)
        self.get_form("login form with flash", "/login")
        self.submit("register alice again", "/register", account)

        self.get_form("login form", "/login?next=/dashboard")
        self.submit(
            "login, wrong password",
            "/login?next=/dashboard",
            {"username": "alice", "password": "nope"},
        )
        self.submit(
            "login, empty form", "/login?next=/dashboard", {"username": "", "password": ""}
        )
        self.submit(
            "login, offsite next",
            "/login?next=//evil.example/",
            {"username": "alice", "password": "s3cret!"},
        )
        get("dashboard, first visit", "GET", "/dashboard")
        get("dashboard, second visit", "GET", "/dashboard")
        get("dashboard, HEAD", "HEAD", "/dashboard")
        get("api, OPTIONS", "OPTIONS", "/api/items")
        get("api, DELETE", "DELETE", "/api/items")

        # Items through the async form handler ...
        self.get_form("new item form", "/items/new")
        self.submit(
            "new item without CSRF token",
            "/items/new",
            {"name": "Widget", "quantity": "3"},
            token=False,
        )
        self.submit("new item, bad quantity", "/items/new", {"name": "Widget", "quantity": "0"})
        self.submit("new item, no name", "/items/new", {"name": "", "quantity": "2"})
        self.submit("new item", "/items/new", {"name": "Widget", "quantity": "3"})
        get("dashboard, after async create", "GET", "/dashboard")
        # ... the sync list page's form ...
        self.get_form("item list, one item", "/items")
        self.submit(
            "sync item without CSRF token",
            "/items",
            {"name": "Gadget", "quantity": "5"},
            token=False,
        )
        self.submit("sync item", "/items", {"name": "Gadget", "quantity": "5"})
        self.get_form("item list, two items", "/items")
        # ... and the JSON API.
        get("api list", "GET", "/api/items")
        self.post_json("api create", "/api/items", {"name": "Sprocket", "quantity": 7})
        self.post_json("api create, invalid", "/api/items", {"name": "", "quantity": 2000})
        self.post_json("api create without CSRF header", "/api/items", {"name": "X"}, csrf=None)
        self.post_json("api create, bad CSRF header", "/api/items", {"name": "X"}, csrf="bogus")
        get("api item", "GET", "/api/items/1")
        get("api missing item", "GET", "/api/items/99")
        get("api list, three items", "GET", "/api/items")
        get("dashboard, three items", "GET", "/dashboard")

        get("logout", "GET", "/logout")
        get("home after logout", "GET", "/")
        get("dashboard after logout", "GET", "/dashboard")
        get("new item form after logout", "GET", "/items/new")
        get("api after logout", "GET", "/api/items")
        get("api item after logout", "GET", "/api/items/1")

        # Another user cannot see alice's items.
        self.get_form("register form, bob", "/register")
        self.submit(
            "register bob", "/register", {"username": "bob", "password": "pw", "confirm": "pw"}
        )
        self.get_form("login form, bob", "/login")
        self.submit("login bob", "/login", {"username": "bob", "password": "pw"})
        get("api, bob's items", "GET", "/api/items")
        get("api, alice's item as bob", "GET", "/api/items/1")
        get("dashboard, bob", "GET", "/dashboard")


#: What the reference must answer (status, Location, a text in the body).
EXPECTED: dict[str, tuple[int, str | None, str | None]] = {
    "home, anonymous": (200, None, "Register or log in"),
    "dashboard, anonymous": (302, "/login?next=/dashboard", None),
    "login page after redirect": (200, None, "Please log in to see this page."),
    "api, anonymous": (401, None, '"authentication required"'),
    "no such page": (404, None, "Not Found"),
    "register without CSRF token": (400, None, "The CSRF token is missing."),
    "register, forged CSRF token": (400, None, "The CSRF token is invalid."),
    "register, passwords differ": (200, None, "Field must be equal to password."),
    "register alice": (302, "/login", None),
    "login form with flash": (200, None, "Registered. Please log in."),
    "register alice again": (200, None, "That username is taken."),
    "login, wrong password": (200, None, "Invalid username or password."),
    "login, empty form": (200, None, "This field is required."),
    "login, offsite next": (302, "/dashboard", None),
    "dashboard, first visit": (200, None, "Visits this session: 1"),
    "dashboard, second visit": (200, None, "Visits this session: 2"),
    "dashboard, HEAD": (200, None, None),
    "api, OPTIONS": (200, None, None),
    "api, DELETE": (405, None, None),
    "new item without CSRF token": (400, None, "The CSRF token is missing."),
    "new item, bad quantity": (200, None, "Number must be between 1 and 1000."),
    "new item": (302, "/dashboard", None),
    "dashboard, after async create": (200, None, "Last added here: Widget"),
    "sync item without CSRF token": (400, None, "The CSRF token is missing."),
    "sync item": (302, "/items", None),
    "item list, two items": (200, None, "Gadget &times; 5"),
    "api create": (201, None, '"Sprocket"'),
    "api create, invalid": (400, None, '"errors"'),
    "api create without CSRF header": (400, None, "The CSRF token is missing."),
    "api create, bad CSRF header": (400, None, "The CSRF token is invalid."),
    "api item": (200, None, '"Widget"'),
    "api missing item": (404, None, '"not found"'),
    "dashboard, three items": (200, None, "you have 3 items"),
    "logout": (302, "/", None),
    "dashboard after logout": (302, "/login?next=/dashboard", None),
    "api after logout": (401, None, None),
    "api, bob's items": (200, None, '"items":[]'),
    "api, alice's item as bob": (404, None, None),
    "dashboard, bob": (200, None, "you have 0 items"),
}


def test_realistic_app_answers_as_under_the_sync_worker(tmp_path: Path, gunicorn):
    reference = gunicorn(
        APP, worker="sync", cwd=EXAMPLES, env={"REALISTIC_INSTANCE": str(tmp_path / "sync")}
    )
    candidate = gunicorn(
        APP, "--threads", "4", cwd=EXAMPLES, env={"REALISTIC_INSTANCE": str(tmp_path / "async")}
    )
    with (
        httpx.Client(base_url=reference.url, follow_redirects=False, timeout=10) as ref,
        httpx.Client(base_url=candidate.url, follow_redirects=False, timeout=10) as cand,
    ):
        pair = Pair(ref, cand, body_filter=without_tokens)
        Script(pair).run()

    def logs() -> str:
        return f"-- reference:\n{reference.log()}\n-- candidate:\n{candidate.log()}"

    for label, (status, location, text) in EXPECTED.items():
        answer, _ = pair.answers(label)
        assert answer.status == status, (label, answer.summary(), logs())
        assert dict(answer.headers)["location"] == location, (label, answer.summary())
        if text is not None:
            assert text in answer.body, (label, answer.summary())
    api_list = json.loads(pair.answers("api list, three items")[0].body)
    assert [i["name"] for i in api_list["items"]] == ["Widget", "Gadget", "Sprocket"]
    pair.assert_identical(logs)
    assert "Traceback" not in candidate.log(), candidate.log()
    # Each server had its own database.
    assert (tmp_path / "sync" / "realistic.sqlite").is_file()
    assert (tmp_path / "async" / "realistic.sqlite").is_file()

"""Flask's tutorial app, every view made ``async def``, answers as the original.

The must-show: Flaskr from the Flask sdist of the installed Flask version,
with nothing changed but ``def`` -> ``async def`` on each ``@bp.route``
view, served by ``flask_async_worker.UVLoopWorker``, answers a whole scripted
session (register, log in, write, edit, delete, forbidden and missing posts,
log out) exactly as the unchanged app does under gunicorn's sync worker.

And the context that makes it worth showing: the same async copy under
gunicorn's own workers, where Flask runs each async view through asgiref in
another thread, fails — the per-request SQLite connection on ``g`` is used
from the wrong thread, and ``login_required`` (a sync decorator) hands Flask
an un-awaited coroutine.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from .flaskr_support import Pair

#: The view functions of flaskr/auth.py and flaskr/blog.py (every ``@bp.route``).
VIEWS = {"register", "login", "logout", "index", "create", "update", "delete"}
APP = "flaskr:create_app()"
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")

pytestmark = pytest.mark.timeout(90)


# -- the app ----------------------------------------------------------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path(sys.prefix) / "cache"
    return root / "flask_async_worker" / "sdists"


def flask_sdist() -> Path:
    """The sdist of the installed Flask, downloaded once into the cache."""
    version = importlib.metadata.version("flask")
    cache = cache_dir()
    target = cache / f"flask-{version}.tar.gz"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"flask=={version}",
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
        found = sorted(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or len(found) != 1:
            pytest.fail(
                f"could not download the Flask {version} sdist ({' '.join(cmd)}):\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        os.replace(found[0], target)  # atomic: a concurrent run sees all or nothing
    return target


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/tutorial of the installed Flask's sdist, extracted once."""
    sdist = flask_sdist()
    dest = tmp_path_factory.mktemp("flask-sdist")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/examples/tutorial/" in m.name]
        tar.extractall(dest, members=members, filter="data")
    (found,) = dest.glob("*/examples/tutorial")
    assert (found / "flaskr" / "__init__.py").is_file()
    return found


def asyncify_views(source: str) -> tuple[str, list[str]]:
    """Turn each function decorated with ``@bp.route(...)`` into ``async def``.

    A mechanical text transform: after a ``@bp.route(`` line, the next
    top-level ``def`` line (past any further decorators) gets ``async``.
    """
    lines = source.splitlines(keepends=True)
    changed: list[str] = []
    routed = False
    for i, line in enumerate(lines):
        if line.startswith("@bp.route("):
            routed = True
        elif routed and line.startswith("def "):
            lines[i] = "async " + line
            match = re.match(r"def (\w+)\(", line)
            assert match is not None
            changed.append(match.group(1))
            routed = False
    return "".join(lines), changed


def make_copy(tutorial: Path, dest: Path, *, make_async: bool) -> Path:
    """A copy of the tutorial app in ``dest`` (instance folder: ``dest/instance``)."""
    shutil.copytree(tutorial, dest)
    if make_async:
        changed: list[str] = []
        for name in ("auth.py", "blog.py"):
            path = dest / "flaskr" / name
            before = path.read_text()
            after, names = asyncify_views(before)
            # Exactly the view lines changed, each by a leading "async ".
            diff = [
                (a, b)
                for a, b in zip(before.splitlines(), after.splitlines(), strict=True)
                if a != b
            ]
            assert [b for _, b in diff] == [f"async {a}" for a, _ in diff]
            assert len(diff) == len(names)
            path.write_text(after)
            changed += names
        assert sorted(changed) == sorted(VIEWS)
    return dest


def init_db(*apps: Path) -> None:
    """``flask --app flaskr init-db`` in each app's directory (concurrently)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "flaskr", "init-db"],
            cwd=app,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for app in apps
    ]
    for app, proc in zip(apps, procs, strict=True):
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "Initialized the database." in out
        assert (app / "instance" / "flaskr.sqlite").is_file()


def without_dates(text: str) -> str:
    return _DATE.sub("<date>", text)


# -- the scripted session ------------------------------------------------------------


def register(username: str, password: str) -> dict[str, str]:
    return {"username": username, "password": password}


def post(title: str, body: str) -> dict[str, str]:
    return {"title": title, "body": body}


def run_session(pair: Pair) -> None:
    r = pair.request
    r("home, anonymous", "GET", "/")
    r("hello", "GET", "/hello")
    r("stylesheet", "GET", "/static/style.css")
    r("unknown page", "GET", "/no/such/page")

    r("register form", "GET", "/auth/register")
    r("register alice", "POST", "/auth/register", data=register("alice", "alice-pw"))
    r("register alice again", "POST", "/auth/register", data=register("alice", "other"))
    r("register without username", "POST", "/auth/register", data=register("", "pw"))
    r("register without password", "POST", "/auth/register", data=register("carol", ""))
    r("register with a field missing", "POST", "/auth/register", data={"username": "carol"})
    r("register bob", "POST", "/auth/register", data=register("bob", "bob-pw"))

    # Bob writes post 1, which Alice may not touch.
    r("login bob", "POST", "/auth/login", data=register("bob", "bob-pw"))
    r("create, bob", "POST", "/create", data=post("Bob's post", "Hands off."))
    r("logout bob", "GET", "/auth/logout")

    r("login form", "GET", "/auth/login")
    r("login, unknown user", "POST", "/auth/login", data=register("mallory", "x"))
    r("login, wrong password", "POST", "/auth/login", data=register("alice", "wrong"))
    r("login alice", "POST", "/auth/login", data=register("alice", "alice-pw"))
    r("home, logged in", "GET", "/")
    r("home, HEAD", "HEAD", "/")
    r("login, OPTIONS", "OPTIONS", "/auth/login")
    r("login, PUT", "PUT", "/auth/login")
    r("create, JSON body", "POST", "/create", json={"title": "t", "body": "b"})

    r("create form", "GET", "/create")
    r("create without title", "POST", "/create", data=post("", "no title"))
    # Posts are listed by their creation time, in whole seconds: one second
    # apart, the order is the same on both servers.
    time.sleep(1.05)
    r("create first", "POST", "/create", data=post("First", "The <first> post & more."))
    time.sleep(1.05)
    r("create second", "POST", "/create", data=post("Second", "Another one."))
    r("home, two posts", "GET", "/")

    r("update form", "GET", "/2/update")
    r("update without title", "POST", "/2/update", data=post("", "x"))
    r("update", "POST", "/2/update", data=post("First, edited", "Edited body."))
    r("delete", "POST", "/3/delete")
    r("delete by GET", "GET", "/2/delete")
    r("update another user's post", "GET", "/1/update")
    r("delete another user's post", "POST", "/1/delete")
    r("update a missing post", "GET", "/99/update")
    r("delete a missing post", "POST", "/99/delete")
    r("home, after edits", "GET", "/")

    r("logout", "GET", "/auth/logout")
    r("home, logged out", "GET", "/")
    r("create form, logged out", "GET", "/create")
    r("create, logged out", "POST", "/create", data=post("Nope", "x"))
    r("update, logged out", "GET", "/2/update")


#: What the reference (the original app under gunicorn's sync worker) must
#: answer, so that "identical" cannot mean "identically broken".
EXPECTED: dict[str, tuple[int, str | None, str | None]] = {
    "home, anonymous": (200, None, "Log In"),
    "hello": (200, None, "Hello, World!"),
    "stylesheet": (200, None, "font-family"),
    "unknown page": (404, None, "Not Found"),
    "register form": (200, None, "Register"),
    "register alice": (302, "/auth/login", None),
    "register alice again": (200, None, "User alice is already registered."),
    "register without username": (200, None, "Username is required."),
    "register without password": (200, None, "Password is required."),
    "register with a field missing": (400, None, "Bad Request"),
    "login, unknown user": (200, None, "Incorrect username."),
    "login, wrong password": (200, None, "Incorrect password."),
    "login alice": (302, "/", None),
    "home, logged in": (200, None, "Log Out"),
    "home, HEAD": (200, None, None),
    "login, OPTIONS": (200, None, None),
    "login, PUT": (405, None, "Method Not Allowed"),
    "create, JSON body": (400, None, "Bad Request"),
    "create without title": (200, None, "Title is required."),
    "create first": (302, "/", None),
    "home, two posts": (200, None, "The &lt;first&gt; post &amp; more."),
    "update without title": (200, None, "Title is required."),
    "update": (302, "/", None),
    "delete": (302, "/", None),
    "delete by GET": (405, None, "Method Not Allowed"),
    "update another user's post": (403, None, "Forbidden"),
    "delete another user's post": (403, None, "Forbidden"),
    "update a missing post": (404, None, "Post id 99 doesn&#39;t exist."),
    "home, after edits": (200, None, "First, edited"),
    "logout": (302, "/", None),
    "create form, logged out": (302, "/auth/login", None),
    "create, logged out": (302, "/auth/login", None),
}


def test_async_flaskr_answers_as_the_original(tutorial, tmp_path, gunicorn):
    original = make_copy(tutorial, tmp_path / "original", make_async=False)
    async_copy = make_copy(tutorial, tmp_path / "async", make_async=True)
    init_db(original, async_copy)

    reference = gunicorn(APP, worker="sync", cwd=original)
    candidate = gunicorn(APP, "--threads", "4", cwd=async_copy)
    with (
        httpx.Client(base_url=reference.url, follow_redirects=False, timeout=10) as ref,
        httpx.Client(base_url=candidate.url, follow_redirects=False, timeout=10) as cand,
    ):
        pair = Pair(ref, cand, body_filter=without_dates)
        run_session(pair)

    def logs() -> str:
        return f"-- reference:\n{reference.log()}\n-- candidate:\n{candidate.log()}"

    for label, (status, location, text) in EXPECTED.items():
        answer, _ = pair.answers(label)
        assert answer.status == status, (label, answer.summary())
        assert dict(answer.headers)["location"] == location, (label, answer.summary())
        if text is not None:
            assert text in answer.body, (label, answer.summary())
    newest_first = pair.answers("home, two posts")[0].body
    assert newest_first.index("Second") < newest_first.index("First") < newest_first.index("Bob")
    pair.assert_identical(logs)
    # Nothing went wrong quietly on our side either.
    assert "Traceback" not in candidate.log(), candidate.log()
    assert "Error handling request" not in candidate.log(), candidate.log()


@pytest.mark.parametrize("worker", ["sync", "gthread"])
def test_async_flaskr_fails_under_flasks_own_async_support(tutorial, tmp_path, gunicorn, worker):
    """Context: without the adapter, the async copy is broken."""
    async_copy = make_copy(tutorial, tmp_path / "async", make_async=True)
    init_db(async_copy)
    from werkzeug.security import generate_password_hash

    with sqlite3.connect(async_copy / "instance" / "flaskr.sqlite") as db:
        db.execute(
            "INSERT INTO user (username, password) VALUES (?, ?)",
            ("alice", generate_password_hash("alice-pw")),
        )
        db.execute(
            "INSERT INTO post (title, body, author_id) VALUES ('Hello', 'World', 1)",
        )
    # Logging in is itself one of the broken views: sign alice's session
    # cookie the way the app does (its default SECRET_KEY is "dev").
    from flask import Flask

    signer = Flask(__name__)
    signer.secret_key = "dev"
    serializer = signer.session_interface.get_signing_serializer(signer)  # type: ignore[attr-defined]
    assert serializer is not None
    alice = {"session": serializer.dumps({"user_id": 1})}

    # (gunicorn runs "sync" with --threads > 1 as gthread: give it none.)
    threads = ("--threads", "2") if worker == "gthread" else ()
    server = gunicorn(APP, *threads, worker=worker, cwd=async_copy)
    server.wait_for_log(rf"Using worker: {worker}\n")
    with (
        httpx.Client(base_url=server.url, timeout=10) as anonymous,
        httpx.Client(base_url=server.url, timeout=10, cookies=alice) as logged_in,
    ):
        # An async view opens g.db in asgiref's thread; teardown closes it in
        # the request's thread.
        anonymous_home = anonymous.get("/")
        login = anonymous.post("/auth/login", data=register("alice", "alice-pw"))
        # The before_request hook opens g.db in the request's thread; the
        # async view uses it in asgiref's.
        home = logged_in.get("/")
        # login_required (sync) returns the un-awaited coroutine of create().
        create = logged_in.get("/create")
    log = server.log()
    assert anonymous_home.status_code == 500, anonymous_home.text
    assert login.status_code == 500, login.text
    assert "set-cookie" not in login.headers
    assert home.status_code == 500, home.text
    assert create.status_code == 500, create.text
    assert "SQLite objects created in a thread can only be used in that same thread" in log, log
    assert "but it was a coroutine" in log, log

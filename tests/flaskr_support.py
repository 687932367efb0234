"""Helpers for driving two servers through one scripted session, in lockstep.

``Pair`` holds one ``httpx.Client`` (with its own cookie jar) per server;
each ``pair.request(...)`` sends the same request to both and records what
each answered, normalised only where the two runs cannot agree (cookie
values, dates, per-session tokens).  ``pair.assert_identical()`` reports every
step where the answers differ.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

#: Headers compared between the two servers (besides status and body).
COMPARED_HEADERS = ("location", "content-type", "content-length", "vary", "cache-control")

_COOKIE_VALUE = re.compile(r"^([^=;]+)=([^;]*)")


def normalise_set_cookie(value: str) -> str:
    """``name=VALUE; attrs`` -> ``name=<value>; attrs`` (an empty value stays empty)."""
    return _COOKIE_VALUE.sub(lambda m: f"{m[1]}=" + ("<value>" if m[2] else ""), value)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str | None], ...]
    set_cookie: tuple[str, ...]
    body: str

    def summary(self) -> str:
        head = "\n".join(f"  {k}: {v}" for k, v in self.headers)
        cookies = "\n".join(f"  set-cookie: {c}" for c in self.set_cookie)
        return f"{self.status}\n{head}\n{cookies}\n--- body ---\n{self.body}"


def capture(response: httpx.Response, body_filter: Callable[[str], str]) -> Answer:
    headers = tuple((name, response.headers.get(name)) for name in COMPARED_HEADERS)
    cookies = tuple(normalise_set_cookie(v) for v in response.headers.get_list("set-cookie"))
    return Answer(response.status_code, headers, cookies, body_filter(response.text))


@dataclass
class Pair:
    """The reference server's client and the server under test's client."""

    reference: httpx.Client
    candidate: httpx.Client
    body_filter: Callable[[str], str] = lambda text: text
    #: (label, "METHOD url", reference answer, candidate answer) per step.
    steps: list[tuple[str, str, Answer, Answer]] = field(default_factory=list)

    def request(
        self, label: str, method: str, url: str, **kwargs: Any
    ) -> tuple[httpx.Response, httpx.Response]:
        """Send the same request to both; return (reference, candidate) answers."""
        return self.request_each(label, method, url, lambda side: kwargs)

    def request_each(
        self,
        label: str,
        method: str,
        url: str,
        make_kwargs: Callable[[int], dict[str, Any]],
    ) -> tuple[httpx.Response, httpx.Response]:
        """Like ``request``, with the arguments built per side (0: reference,
        1: candidate) — for a CSRF token each server gave its own client."""
        ref = self.reference.request(method, url, **make_kwargs(0))
        cand = self.candidate.request(method, url, **make_kwargs(1))
        self._record(label, f"{method} {url}", ref, cand)
        return ref, cand

    def _record(self, label: str, line: str, ref: httpx.Response, cand: httpx.Response) -> None:
        if any(step[0] == label for step in self.steps):
            raise ValueError(f"two steps are labelled {label!r}")
        self.steps.append(
            (label, line, capture(ref, self.body_filter), capture(cand, self.body_filter))
        )

    def answers(self, label: str) -> tuple[Answer, Answer]:
        for step_label, _, ref, cand in self.steps:
            if step_label == label:
                return ref, cand
        raise KeyError(label)

    def differences(self) -> list[str]:
        out = []
        for label, line, ref, cand in self.steps:
            if ref != cand:
                out.append(
                    f"== {label}: {line}\n-- reference:\n{ref.summary()}"
                    f"\n-- candidate:\n{cand.summary()}"
                )
        return out

    def assert_identical(self, logs: Callable[[], str] = lambda: "") -> None:
        diffs = self.differences()
        assert not diffs, (
            f"{len(diffs)} of {len(self.steps)} answers differ:\n\n"
            + "\n\n".join(diffs)
            + "\n\n== server logs\n"
            + logs()
        )

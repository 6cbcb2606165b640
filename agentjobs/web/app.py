"""The dashboard as a Starlette application: pages, actions, the JSON API, live events.

`create_app(open_store, ...)` builds it around a store opener (called once, lazily; the store
is shared by the worker threads: both backends are thread-safe) and a clock. Every page and
API answer is read through the query layer; every action goes through `agentjobs.operate`
(the review inbox's through `agentjobs.review`), as the CLI's verbs do.

Pages: `/` overview, `/timeline`, `/history`, `/jobs/{job}`, `/runs/{id}`, `/dead-letters`,
`/inbox` (the review inbox, issue 15) and `/inbox/{id}` (a run's diff view); actions, each a
GET that shows a confirmation and a POST that does it (CSRF-checked, absent with
`read_only`): `/jobs/{job}/run`, `/dead-letters/{id}/replay`, `/dead-letters/{id}/resolve`,
`/inbox/{id}/approve`, `/inbox/{id}/reject`, `/inbox/{id}/retry`.
API: `GET /api/jobs`, `GET /api/jobs/{job}`, `POST /api/jobs/{job}/runs`, `GET /api/runs/{id}`,
`GET /api/overview`, `GET /api/timeline`, `GET /api/reviews`, `GET /api/reviews/{id}`,
`GET /api/events` (SSE).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentjobs import query
from agentjobs.clock import Clock, iso, parse
from agentjobs.errors import StateUnavailableError, UserError
from agentjobs.store import Review, Store
from agentjobs.web import render, security
from agentjobs.web.events import EventFeed, sse

STATIC = Path(__file__).with_name("static")
WORKER_THREADS = 8
LOCK_TIMEOUT = 10.0  # seconds an action waits for the state lock (a tick may hold it)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass
class Settings:
    """What a dashboard serves and how: the state (through `open_store`), whether actions
    are offered, the access token (None: loopback only, checked by `Host:`)."""

    open_store: Callable[[], Store]
    read_only: bool = False
    token: str | None = None
    jobs_dir: Path | None = None
    clock: Clock = field(default_factory=Clock)
    poll_interval: float = 1.0
    csrf: security.Csrf = field(default_factory=security.Csrf)
    cache: query.DayCache = field(default_factory=query.DayCache)
    _store: Store | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = self.open_store()
            return self._store

    def now(self) -> datetime:
        return self.clock.now()

    def warm(self) -> None:
        """Read what the first pages read (today's and yesterday's records) into the cache."""
        import contextlib

        now = self.now()
        with contextlib.suppress(Exception):  # a state that cannot be read says so on a page
            start, end = now - timedelta(seconds=render.SPANS[render.DEFAULT_SPAN][0]), now
            query.timeline(self.store(), start, end, now, cache=self.cache)
            query.overview(self.store(), now, cache=self.cache)

    def close(self) -> None:
        with self._lock:
            close = getattr(self._store, "close", None)
            if close is not None:
                close()
            self._store = None


def create_app(
    open_store: Callable[[], Store],
    *,
    read_only: bool = False,
    token: str | None = None,
    jobs_dir: Path | None = None,
    clock: Clock | None = None,
    poll_interval: float = 1.0,
    warm: bool = False,
) -> Starlette:
    """The dashboard for the state `open_store()` opens. With `token`, every request must
    carry it (bearer header or the session cookie `/login?token=` sets); without, requests
    must name a loopback host. `warm`: fill the day cache (the overview's and the 24 h
    timeline's days) in the background at start-up."""
    settings = Settings(
        open_store,
        read_only=read_only,
        token=token,
        jobs_dir=jobs_dir,
        clock=clock or Clock(),
        poll_interval=poll_interval,
    )
    feed = EventFeed(settings.store, settings.now, poll_interval)
    views = _Views(settings, feed)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        import anyio.to_thread

        # pages are rendered in worker threads, each with its own database connection on
        # PostgreSQL: a few threads, not anyio's default 40
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        if warm:  # parse today's and yesterday's records now, not on the first visitor's time
            threading.Thread(target=settings.warm, name="agentjobs-ui-warm", daemon=True).start()
        try:
            yield
        finally:
            settings.close()

    routes = [
        Route("/", views.overview),
        Route("/timeline", views.timeline),
        Route("/history", views.history),
        Route("/jobs/{job}", views.job),
        Route("/jobs/{job}/run", views.run_job, methods=["GET", "POST"]),
        Route("/runs/{run_id}", views.run),
        Route("/runs/{run_id}/attempts/{attempt:int}/log", views.log),
        Route("/dead-letters", views.dead_letters),
        Route("/dead-letters/{entry_id}/replay", views.replay, methods=["GET", "POST"]),
        Route("/dead-letters/{entry_id}/resolve", views.resolve, methods=["GET", "POST"]),
        Route("/inbox", views.inbox),
        Route("/inbox/{run_id}", views.inbox_entry),
        Route("/inbox/{run_id}/{action}", views.decide, methods=["GET", "POST"]),
        Route("/login", views.login),
        Route("/api/jobs", views.api_jobs),
        Route("/api/jobs/{job}", views.api_job),
        Route("/api/jobs/{job}/runs", views.api_enqueue, methods=["POST"]),
        Route("/api/runs/{run_id}", views.api_run),
        Route("/api/overview", views.api_overview),
        Route("/api/timeline", views.api_timeline),
        Route("/api/reviews", views.api_reviews),
        Route("/api/reviews/{run_id}", views.api_review),
        Route("/api/events", views.api_events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def state_problem(request: Request, exc: Exception) -> Response:
        # the user's to fix (a state that is locked too long, damaged, unreadable; a database
        # that is down): one line naming it, as the CLI says it, never a traceback
        status = 503 if isinstance(exc, StateUnavailableError) else 500
        return _refuse(status, str(exc), request.url.path.startswith("/api/"))

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={UserError: state_problem})
    app.state.settings = settings
    app.state.feed = feed
    app.add_middleware(_Guard, settings=settings)
    return app


# -- access and headers --------------------------------------------------------------------------


class _Guard:
    """Every request: the access token (or, without one, a loopback `Host:`); every response:
    security headers (a strict CSP: scripts only from /static, no inline ones), no caching, and
    `Server-Timing: app;dur=MS`, the time it took to start the response."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                # how long the page took to make (a response starts once it is rendered);
                # browsers show it, the benchmark reads it
                out.append("server-timing", f"app;dur={(time.perf_counter() - began) * 1000:.1f}")
                out.setdefault("content-security-policy", CSP)
                out.setdefault("x-content-type-options", "nosniff")
                out.setdefault("x-frame-options", "DENY")
                out.setdefault("referrer-policy", "same-origin")
                out.setdefault("cache-control", "no-store")
            await send(message)

        refusal = self._refusal(scope, Headers(scope=scope))
        if refusal is not None:
            await refusal(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)

    def _refusal(self, scope: Scope, headers: Headers) -> Response | None:
        token = self.settings.token
        api = str(scope.get("path", "")).startswith("/api/")
        if token is None:
            if not security.is_loopback(security.host_name(headers.get("host", ""))):
                return _refuse(400, "this dashboard answers to a loopback host name only", api)
            return None
        if scope.get("path") == "/login":
            return None
        if security.same(security.bearer(headers.get("authorization")), token):
            return None
        cookies = Request(scope).cookies
        if security.same(cookies.get(security.SESSION_COOKIE), security.session_value(token)):
            return None
        return _refuse(
            401,
            "an access token is needed: open the /login?token=... address `agentjobs ui` "
            "printed, or send `Authorization: Bearer TOKEN` (the token is in the state's "
            f"local directory, file {security.TOKEN_FILE})",
            api,
            {"www-authenticate": 'Bearer realm="agentjobs"'},
        )


def _refuse(
    status: int, message: str, api: bool, headers: Mapping[str, str] | None = None
) -> Response:
    if api:
        return JSONResponse({"error": message}, status, headers=dict(headers or {}))
    body = render.render(
        "error.html", code=status, message=message, read_only=True, csrf="", path="", where=""
    )
    return HTMLResponse(body, status, headers=dict(headers or {}))


# -- pages, actions and the API ------------------------------------------------------------------


class _Views:
    def __init__(self, settings: Settings, feed: EventFeed) -> None:
        self.s = settings
        self.feed = feed

    # helpers

    def _page(
        self, request: Request, template: str, http_status: int = 200, **context: Any
    ) -> Response:
        from agentjobs import review

        cookie = request.cookies.get(security.CSRF_COOKIE)
        fresh = cookie is None or len(cookie) < 16
        if fresh:
            cookie = security.Csrf.new_cookie()
        assert cookie is not None
        body = render.render(
            template,
            read_only=self.s.read_only,
            csrf=self.s.csrf.token(cookie),
            path=request.url.path,
            where=self.s.store().describe(),
            pending_reviews=len(review.inbox(self.s.store())),  # the nav's count
            **context,
        )
        response = HTMLResponse(body, http_status)
        if fresh:
            response.set_cookie(
                security.CSRF_COOKIE, cookie, httponly=True, samesite="strict", path="/"
            )
        return response

    def _error(
        self, request: Request, status: int, message: str, back: str | None = None
    ) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status)
        return self._page(request, "error.html", status, code=status, message=message, back=back)

    def _engine(self) -> Any:
        from agentjobs.engine import Engine, default_host

        return Engine(
            self.s.store(), clock=self.s.clock, lock_timeout=LOCK_TIMEOUT, host=default_host()
        )

    async def _checked_form(self, request: Request) -> tuple[dict[str, str], Response | None]:
        """The posted form, or the refusal of a POST that is not from one of our pages."""
        if self.s.read_only:
            return {}, self._error(request, 403, "this dashboard is read-only (--read-only)")
        refusal = _foreign_origin(request)
        if refusal is not None:
            return {}, self._error(request, 403, refusal)
        fields = await _form(request)
        if not self.s.csrf.valid(request.cookies.get(security.CSRF_COOKIE), fields.get("csrf")):
            return fields, self._error(
                request,
                403,
                "the form's CSRF token is missing or stale (the server restarted?): "
                "reload the page and try again",
            )
        return fields, None

    # pages

    def overview(self, request: Request) -> Response:
        data = query.overview(self.s.store(), self.s.now(), cache=self.s.cache)
        return self._page(request, "overview.html", overview=data, live=True)

    def timeline(self, request: Request) -> Response:
        now = self.s.now()
        span, start, end = render.window(
            request.query_params.get("span", ""), request.query_params.get("end"), now
        )
        tl = query.timeline(self.s.store(), start, end, now, cache=self.s.cache)
        view = render.timeline_view(tl, span, now)
        return self._page(
            request,
            "timeline.html",
            view=view,
            data=render.timeline_data(view),
            spans=list(render.SPANS),
            live=True,
        )

    def history(self, request: Request) -> Response:
        params = request.query_params
        job, lock, outcome = params.get("job") or None, params.get("lock") or None, None
        outcome = params.get("outcome") or None
        page = query.runs_page(
            self.s.store(),
            job=job,
            lock=lock,
            outcome=outcome,
            older=params.get("older"),
            cache=self.s.cache,
        )
        return self._page(
            request,
            "history.html",
            page=page,
            filters={"job": job or "", "lock": lock or "", "outcome": outcome or ""},
            older_link=_link("/history", job=job, lock=lock, outcome=outcome, older=page.older),
            live=not params.get("older"),
        )

    def job(self, request: Request) -> Response:
        name = request.path_params["job"]
        store = self.s.store()
        detail = query.job_detail(
            store, name, self.s.now(), jobs_dir=self.s.jobs_dir, cache=self.s.cache
        )
        if detail is None:
            return self._error(request, 404, f"no applied job named {name!r}")
        page = query.runs_page(
            store, job=name, older=request.query_params.get("older"), cache=self.s.cache
        )
        return self._page(
            request,
            "job.html",
            d=detail,
            spec=render.safe_spec(detail.spec),
            page=page,
            older_link=_link(f"/jobs/{quote(name)}", older=page.older),
            now=iso(self.s.now()) or "",
            live=True,
        )

    def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        store = self.s.store()
        view = query.run_view(store, run_id, self.s.now())
        if view is None:
            return self._error(request, 404, f"no run {run_id!r} is known (queued, run or kept)")
        raw = request.query_params.get("raw") == "1"
        attempts = []
        applied = store.applied().get(view.detail.job)
        workdir = str(applied.spec.get("workdir")) if applied else None
        numbers = sorted(
            {int(r.get("attempt") or 0) for r in view.detail.records}
            | ({view.detail.wait.attempt} if view.detail.wait else set())
        )
        records = {int(r.get("attempt") or 0): r for r in view.detail.records}
        for n in numbers:
            log = query.attempt_log(store, run_id, n)
            lines, pretty = (
                render.log_lines(log.text) if not raw else (log.text.splitlines(), False)
            )
            record = records.get(n, {})
            facts = record.get("agent") or {}
            tree = facts.get("worktree") if isinstance(facts, dict) else None
            stat = None
            if isinstance(tree, dict):
                from agentjobs.worktree import diffstat

                stat = diffstat(tree, workdir)
            attempts.append(
                {
                    "n": n,
                    "record": record,
                    "row": query.run_row(record) if record else None,
                    "log": log,
                    "lines": lines,
                    "pretty": pretty,
                    "worktree": tree if isinstance(tree, dict) else None,
                    "diffstat": stat,
                }
            )
        return self._page(
            request,
            "run.html",
            view=view,
            attempts=attempts,
            raw=raw,
            review=query.review_of(store, view.detail.run_id),
            queued=request.query_params.get("queued") == "1",
            now=iso(self.s.now()) or "",
            live=not view.finished,
        )

    def log(self, request: Request) -> Response:
        run_id, n = request.path_params["run_id"], request.path_params["attempt"]
        if not run_id.isalnum():
            return self._error(request, 404, "not a run id")
        log = query.attempt_log(self.s.store(), run_id, n, max_bytes=0)
        if not log.exists:
            return self._error(request, 404, f"no log of run {run_id} attempt {n} on this host")
        return FileResponse(log.path, media_type="text/plain; charset=utf-8")

    def dead_letters(self, request: Request) -> Response:
        show_all = request.query_params.get("all") == "1"
        groups = query.dead_letter_groups(self.s.store(), resolved=show_all)
        return self._page(
            request,
            "dead_letters.html",
            groups=groups,
            show_all=show_all,
            resolved=request.query_params.get("resolved"),
            live=True,
        )

    # actions: GET asks to confirm, POST (CSRF-checked) does it

    async def run_job(self, request: Request) -> Response:
        from agentjobs import operate

        name = request.path_params["job"]
        if request.method == "GET":
            if self.s.read_only:
                return self._error(request, 403, "this dashboard is read-only (--read-only)")
            applied = self.s.store().applied()
            if name not in applied:
                return self._error(request, 404, f"no applied job named {name!r}")
            return self._page(
                request,
                "confirm.html",
                action="run",
                title=f"Run {name} now?",
                target=f"/jobs/{quote(name)}/run",
                job=name,
                entry=None,
                lock=str(applied[name].spec.get("lock")),
                back=f"/jobs/{quote(name)}",
            )
        _, refusal = await self._checked_form(request)
        if refusal is not None:
            return refusal
        try:
            item = await _threaded(operate.enqueue_manual, self._engine(), name)
        except UserError as exc:
            return self._error(request, 404, str(exc))
        return RedirectResponse(f"/runs/{item.run_id}?queued=1", 303)

    async def replay(self, request: Request) -> Response:
        from agentjobs import operate

        entry_id = request.path_params["entry_id"]
        if request.method == "GET":
            return self._confirm_entry(request, entry_id, "replay")
        _, refusal = await self._checked_form(request)
        if refusal is not None:
            return refusal
        try:
            item = await _threaded(operate.replay, self._engine(), entry_id)
        except UserError as exc:
            return self._error(request, 409, str(exc))
        return RedirectResponse(f"/runs/{item.run_id}?queued=1", 303)

    async def resolve(self, request: Request) -> Response:
        from agentjobs import operate

        entry_id = request.path_params["entry_id"]
        if request.method == "GET":
            return self._confirm_entry(request, entry_id, "resolve")
        fields, refusal = await self._checked_form(request)
        if refusal is not None:
            return refusal
        note = fields.get("note", "").strip()
        if not note:
            return self._error(request, 400, "a note is needed: say what was done about it")
        try:
            await _threaded(operate.resolve, self._engine(), entry_id, note)
        except UserError as exc:
            return self._error(request, 409, str(exc))
        return RedirectResponse(f"/dead-letters?resolved={quote(entry_id)}", 303)

    # the review inbox (issue 15): a run's branch waits for a person to approve, reject or
    # send it back with guidance; review.py decides, as `agentjobs review ...` does

    def inbox(self, request: Request) -> Response:
        from agentjobs import review

        show_all = request.query_params.get("all") == "1"
        entries = review.inbox(self.s.store(), everything=show_all)
        return self._page(request, "inbox.html", entries=entries, show_all=show_all, live=True)

    def inbox_entry(self, request: Request) -> Response:
        from agentjobs import review

        found, missing = self._review_entry(request.path_params["run_id"])
        if found is None:
            return self._error(request, 404, missing)
        shown = review.show(self.s.store(), found.run_id)
        lines, cut = render.diff_lines(shown.diff)
        log = query.attempt_log(self.s.store(), found.run_id, found.attempt, max_bytes=0)
        return self._page(
            request,
            "review.html",
            shown=shown,
            e=shown.review,
            lines=lines,
            cut=cut,
            log_here=log.exists,
            decided=request.query_params.get("decided") in review.DECISIONS,
        )

    async def decide(self, request: Request) -> Response:
        """`/inbox/{id}/approve|reject|retry`: GET asks to confirm, POST (CSRF-checked)
        decides. A refusal (a conflict, a held lock key, a decision made already) changes
        nothing and says why."""
        from agentjobs import review

        run_id, action = request.path_params["run_id"], request.path_params["action"]
        if action not in review.DECISIONS:
            return self._error(request, 404, f"no action {action!r}: approve, reject or retry")
        if request.method == "GET":
            return await self._confirm_review(request, run_id, action)
        fields, refusal = await self._checked_form(request)
        if refusal is not None:
            return refusal
        found, missing = self._review_entry(run_id)
        if found is None:
            return self._error(request, 404, missing)
        back = f"/inbox/{quote(found.run_id)}"
        note, guidance = fields.get("note", "").strip(), fields.get("guidance", "").strip()
        if action == "reject" and not note:
            return self._error(request, 400, "a note is needed: say why it does not land", back)
        if action == "retry" and not guidance:
            needed = "guidance is needed: say what the next run should do differently"
            return self._error(request, 400, needed, back)
        engine = self._engine()

        def decided() -> None:
            by = self._who(request, found.workdir)
            if action == "approve":
                review.approve(engine, found.run_id, by)
            elif action == "reject":
                review.reject(engine, found.run_id, by, note)
            else:
                review.retry(engine, found.run_id, by, guidance, note or None)

        try:
            await _threaded(decided)
        except UserError as exc:
            return self._error(request, 409, str(exc), back)
        return RedirectResponse(f"{back}?decided={action}", 303)

    async def _confirm_review(self, request: Request, run_id: str, action: str) -> Response:
        if self.s.read_only:
            return self._error(request, 403, "this dashboard is read-only (--read-only)")
        found, missing = self._review_entry(run_id)
        if found is None:
            return self._error(request, 404, missing)
        back = f"/inbox/{quote(found.run_id)}"
        if found.status != "pending":
            d = found.decision or {}
            return self._error(
                request,
                409,
                f"run {found.run_id} was already decided: {found.status} by {d.get('by')} at "
                f"{d.get('at')}; a decision is made once",
                back,
            )
        titles = {
            "approve": f"Approve run {found.run_id} ({found.job})?",
            "reject": f"Reject run {found.run_id} ({found.job})?",
            "retry": f"Send run {found.run_id} ({found.job}) back with guidance?",
        }
        return self._page(
            request,
            "confirm.html",
            action=action,
            title=titles[action],
            target=f"{back}/{action}",
            job=found.job,
            review=found,
            by=await _threaded(self._who, request, found.workdir),
            back=back,
        )

    def _review_entry(self, text: str) -> tuple[Review | None, str]:
        """The inbox entry `text` names (a run id or a unique prefix), or why there is none."""
        from agentjobs import review

        try:
            return review.entry(self.s.store(), text), ""
        except StateUnavailableError:
            raise
        except UserError as exc:
            return None, str(exc)

    def _who(self, request: Request, workdir: str) -> str:
        """Who decides, as the `reviewed` record and a landing's `Approved-by:` say it: the
        server's git user (`review.who`, as the CLI records), and that it was the dashboard,
        which knows no person (a loopback request is anyone on this machine, a token request
        anyone holding the token): the address it came from when that is not a loopback one."""
        from agentjobs import review

        client = request.client.host if request.client else ""
        where = f" from {client}" if client and not security.is_loopback(client) else ""
        return f"{review.who(workdir)} via the dashboard{where}"

    def _confirm_entry(self, request: Request, entry_id: str, action: str) -> Response:
        if self.s.read_only:
            return self._error(request, 403, "this dashboard is read-only (--read-only)")
        entry = self.s.store().dead_letter(entry_id)
        if entry is None:
            return self._error(request, 404, f"no dead letter {entry_id!r}")
        title = (
            f"Replay dead letter {entry_id} ({entry.get('job')})?"
            if action == "replay"
            else f"Resolve dead letter {entry_id} ({entry.get('job')})?"
        )
        return self._page(
            request,
            "confirm.html",
            action=action,
            title=title,
            target=f"/dead-letters/{quote(entry_id)}/{action}",
            job=str(entry.get("job")),
            entry=entry,
            cause=query.dead_letter_cause(entry),
            lock=None,
            back="/dead-letters",
        )

    def login(self, request: Request) -> Response:
        token = self.s.token
        response = RedirectResponse("/", 303)
        if token is None:
            return response
        if not security.same(request.query_params.get("token"), token):
            return _refuse(401, "that is not this dashboard's access token", False)
        response.set_cookie(
            security.SESSION_COOKIE,
            security.session_value(token),
            max_age=30 * 86400,
            httponly=True,
            samesite="lax",
            path="/",
        )
        return response

    # the JSON API (the same data as the CLI's `-o json`, from the same query layer)

    def api_jobs(self, request: Request) -> Response:
        return JSONResponse(query.as_json(query.jobs(self.s.store(), self.s.now())))

    def api_job(self, request: Request) -> Response:
        name = request.path_params["job"]
        detail = query.job_detail(
            self.s.store(), name, self.s.now(), jobs_dir=self.s.jobs_dir, cache=self.s.cache
        )
        if detail is None:
            return JSONResponse({"error": f"no applied job named {name!r}"}, 404)
        return JSONResponse(query.as_json(detail))

    async def api_enqueue(self, request: Request) -> Response:
        from agentjobs import operate

        if self.s.read_only:
            return JSONResponse({"error": "this dashboard is read-only (--read-only)"}, 403)
        refusal = _foreign_origin(request)
        if refusal is None and security.bearer(request.headers.get("authorization")) is None:
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                refusal = (
                    "send the request with `Content-Type: application/json` (or a bearer "
                    "token): a plain form post could come from another site"
                )
        if refusal is not None:
            return JSONResponse({"error": refusal}, 403)
        name = request.path_params["job"]
        try:
            item = await _threaded(operate.enqueue_manual, self._engine(), name)
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, 404)
        return JSONResponse(
            {
                "run_id": item.run_id,
                "item_id": item.id,
                "job": item.job,
                "state": "queued",
                "queued_at": item.queued_at,
                "status": f"/api/runs/{item.run_id}",
                "events": "/api/events",
            },
            202,
            headers={"location": f"/api/runs/{item.run_id}"},
        )

    def api_run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        now = self.s.now()
        view = query.run_view(self.s.store(), run_id, now)
        if view is None:
            return JSONResponse({"error": f"no run {run_id!r} is known"}, 404)
        return JSONResponse(run_json(view, now))

    def api_overview(self, request: Request) -> Response:
        data = query.overview(self.s.store(), self.s.now(), cache=self.s.cache)
        return JSONResponse(query.as_json(data))

    def api_timeline(self, request: Request) -> Response:
        now = self.s.now()
        _, start, end = render.window(
            request.query_params.get("span", ""), request.query_params.get("end"), now
        )
        tl = query.timeline(self.s.store(), start, end, now, cache=self.s.cache)
        return JSONResponse(query.as_json(tl))

    def api_reviews(self, request: Request) -> Response:
        """The review inbox (`?all=1`: decided entries too), as `review list -o json`."""
        from agentjobs import review

        show_all = request.query_params.get("all") == "1"
        return JSONResponse([e.to_dict() for e in review.inbox(self.s.store(), show_all)])

    def api_review(self, request: Request) -> Response:
        """One entry with its diff, the agent's final message and verify's output, as
        `review show -o json`."""
        from agentjobs import review

        found, missing = self._review_entry(request.path_params["run_id"])
        if found is None:
            return JSONResponse({"error": missing}, 404)
        shown = review.show(self.s.store(), found.run_id)
        return JSONResponse(
            {
                **shown.review.to_dict(),
                "diff": shown.diff,
                "final_message": shown.final_message,
                "verify": shown.verify,
            }
        )

    async def api_events(self, request: Request) -> Response:
        last = request.headers.get("last-event-id", "")
        start = await self.feed.start()
        after = int(last) if last.isdigit() and int(last) <= start else start

        async def stream() -> AsyncIterator[str]:
            yield f"retry: 2000\n: agentjobs events after {after}\n\n"
            async for found in self.feed.follow(after):
                if found is None:
                    yield ": keep-alive\n\n"
                else:
                    yield sse(*found)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no", "cache-control": "no-store"},
        )


def run_json(view: query.RunView, now: datetime) -> dict[str, Any]:
    """`GET /api/runs/{id}`: where the run stands (`state`, `finished`), its attempts, and for
    a running attempt how long it has run (`progress.elapsed_s`)."""
    data: dict[str, Any] = {
        "run_id": view.detail.run_id,
        "job": view.detail.job,
        "state": view.state,
        "finished": view.finished,
        "attempts": view.attempts,
        **query.as_json(view.detail),
    }
    wait = view.detail.wait
    if wait is not None and wait.state == "running" and wait.started_at:
        elapsed = (now - parse(wait.started_at)).total_seconds()
        data["progress"] = {"attempt": wait.attempt, "elapsed_s": round(max(elapsed, 0.0), 1)}
    return data


MAX_FORM = 64 * 1024


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (our pages post nothing else), parsed without python-multipart;
    a body over MAX_FORM bytes is not read past it."""
    from urllib.parse import parse_qsl

    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return {}
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


def _foreign_origin(request: Request) -> str | None:
    """Why a POST is refused for coming from another site (`Origin:` not this host)."""
    origin = request.headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin)
    if origin == "null" or parts.netloc.lower() != request.headers.get("host", "").lower():
        return f"a request from another site ({origin}) is refused"
    return None


def _link(path: str, **params: str | None) -> str | None:
    """`path?k=v...` (None when there is no `older` page to link to)."""
    if not params.get("older"):
        return None
    from urllib.parse import urlencode

    return f"{path}?{urlencode({k: v for k, v in params.items() if v})}"


async def _threaded(function: Callable[..., Any], *args: Any) -> Any:
    """A blocking store write (it may wait for the state lock) off the event loop."""
    import anyio.to_thread

    def call() -> Any:
        return function(*args)

    try:
        return await anyio.to_thread.run_sync(call)
    except StateUnavailableError as exc:
        raise UserError(str(exc)) from None

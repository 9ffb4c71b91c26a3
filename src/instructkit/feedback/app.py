"""The FastAPI application: storage and schema upgrade at startup, who is asking (a session cookie or
an API token), CSRF, request size limits, security headers and error responses. The routes are in
api.py (JSON, for scripts and simulated labelers) and pages.py (server-rendered HTML)."""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from instructkit.errors import InputError
from instructkit.feedback import db as D
from instructkit.feedback import security as S
from instructkit.feedback.labels import LabelError
from instructkit.feedback.service import Forbidden, NotFound

HERE = Path(__file__).parent
SESSION_COOKIE = "ik_session"
LOGIN_CSRF_COOKIE = "ik_login_csrf"
MAX_BODY = 1 << 20            # 1 MiB: any label, form or API call
MAX_UPLOAD = 64 << 20         # 64 MiB: prompt and output imports
UPLOAD_PATHS = re.compile(r"^(/admin/projects/\d+/import|/api/v1/projects/[^/]+/(prompts|outputs))")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body too large: at most {limit // 1024} KiB here")


class NotAuthenticated(Exception):
    pass


class BodyLimit:
    """Refuse bodies over the limit: early by Content-Length, else while the body streams in."""

    def __init__(self, app, default: int = MAX_BODY, upload: int = MAX_UPLOAD):
        self.app, self.default, self.upload = app, default, upload

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload if UPLOAD_PATHS.match(scope["path"]) else self.default
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _plain_413(send, limit)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _plain_413(send, limit)


async def _plain_413(send, limit: int):
    body = json.dumps({"error": BodyTooLarge(limit).detail}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------- who is asking

@dataclass
class Auth:
    user: D.User
    session: D.WebSession | None  # None when the request came with an API token

    @property
    def via_token(self) -> bool:
        return self.session is None


def get_db(request: Request):
    db: Session = request.app.state.sessions()
    try:
        yield db
    finally:
        db.close()  # handlers commit explicitly; anything uncommitted is rolled back


def current_auth(request: Request, db: Session = Depends(get_db)) -> Auth:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        user = S.token_user(db, header[7:].strip())
        if user is None:
            raise HTTPException(401, "invalid API token")
        return Auth(user, None)
    found = S.session_user(db, request.cookies.get(SESSION_COOKIE))
    if found is None:
        raise NotAuthenticated()
    return Auth(*found)


def require_admin(auth: Auth = Depends(current_auth)) -> Auth:
    if not auth.user.is_admin:
        raise HTTPException(403, "admins only")
    return auth


async def form_data(request: Request):
    """The parsed form of a page's POST (read here, in the event loop, so handlers can stay sync)."""
    return await request.form()


def check_csrf(request: Request, auth: Auth, sent: str | None) -> None:
    """Every state change made with a session cookie must carry the session's CSRF token (a form
    field or the X-CSRF-Token header). API tokens are not sent by browsers on their own: no check."""
    if request.method in ("GET", "HEAD", "OPTIONS") or auth.via_token:
        return
    if not S.same(sent or request.headers.get("x-csrf-token"), auth.session.csrf):
        raise HTTPException(403, "CSRF token missing or invalid: reload the page and submit again")


# ----------------------------------------------------------------------------- the application

def create_app(db_url: str = D.DEFAULT_DB, *, secure_cookies: bool = False, migrate: bool = True) -> FastAPI:
    """The labeling app on `db_url`; the schema is upgraded to the newest revision first."""
    from instructkit.feedback import api, pages

    engine = D.make_engine(db_url)
    if migrate:
        D.upgrade(engine)
    app = FastAPI(title="instructkit labeling", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.engine = engine
    app.state.sessions = D.session_factory(engine)
    app.state.secure_cookies = secure_cookies
    app.state.jobs = {}
    app.state.jobs_lock = threading.Lock()
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    app.add_middleware(BodyLimit)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if request.url.path.startswith(("/api/", "/task", "/admin")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def error(request: Request, status: int, message: str, field: str | None = None):
        if is_api(request):
            body = {"error": message}
            if field:
                body["field"] = field
            return JSONResponse(body, status_code=status)
        return app.state.templates.TemplateResponse(request, "error.html", {"status": status, "message": message,
                                                                             "user": None}, status_code=status)

    @app.exception_handler(NotAuthenticated)
    async def _unauth(request: Request, exc):
        if is_api(request):
            return JSONResponse({"error": "log in, or send an API token as 'Authorization: Bearer TOKEN'"},
                                status_code=401)
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        if first.get("type") == "json_invalid":
            msg = f"malformed JSON: {first.get('ctx', {}).get('error', 'cannot parse')}"
        else:
            msg = f"{'.'.join(loc) or 'request'}: {first.get('msg', 'invalid')}"
        return error(request, 422, msg)

    @app.exception_handler(LabelError)
    async def _label(request: Request, exc: LabelError):
        return error(request, 422, str(exc), exc.field)

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError):
        return error(request, 422, exc.format(), exc.field)

    @app.exception_handler(NotFound)
    async def _missing(request: Request, exc: NotFound):
        return error(request, 404, str(exc))

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return error(request, 403, str(exc))

    return app


def serve(db_url: str, host: str = "127.0.0.1", port: int = 8000, secure_cookies: bool = False) -> None:
    import uvicorn

    app = create_app(db_url, secure_cookies=secure_cookies)
    print(f"label: serving {db_url} at http://{host}:{port}/  (schema {D.current_revision(app.state.engine)})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 in a background thread (tests, the load benchmark).

        with ServerThread(app) as url: ...   # url is http://127.0.0.1:PORT"""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{port}", daemon=True)

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError(f"the test server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

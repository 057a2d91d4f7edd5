"""The labelling web page of D3PO's human feedback: a small Starlette app over a label folder.

    python -m diffusion_align.label serve --dir labels/ [--host 127.0.0.1] [--port 8765] [--token T]

The page shows each group's prompt and images side by side; the annotator picks the best image, ranks the
group, marks a tie or a broken image, by click or keyboard. Every label is written when it is given
(:class:`~diffusion_align.label_store.LabelFile`, one atomically rewritten file per annotator), so a reload
or a restart continues where the annotator stopped.

Safe by default: it binds to 127.0.0.1; when it listens elsewhere every request needs the token printed
at start (``?token=`` once, then a cookie). Only the folder's group images are served.

HTTP API (JSON): ``GET /api/group/{g}?annotator=A``, ``POST /api/label`` ``{"annotator", "group", "best" |
"ranking", "broken"}``, ``POST /api/undo`` ``{"annotator"}``, ``GET /api/summary``.
"""

from __future__ import annotations

import hmac
import html
import json
import secrets
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from diffusion_align.label_store import LabelFile, check_annotator, read_groups, scores_for, summary
from mmreward.config_file import ConfigError

PAGE = Path(__file__).with_name("label_page.html")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
COOKIE = "mmalign_label_token"


class TokenGate:
    """ASGI middleware: every request must carry ``token`` (query ``?token=``, the cookie or ``X-Label-Token``)."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        req = Request(scope)
        given = req.query_params.get("token") or req.cookies.get(COOKIE) or req.headers.get("x-label-token") or ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return await JSONResponse({"error": "a valid token is required (open the address the server printed)"},
                                      status_code=403)(scope, receive, send)

        async def send_with_cookie(message):
            if message["type"] == "http.response.start" and req.query_params.get("token"):
                cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(folder: str | Path, token: str | None = None) -> Starlette:
    """The app over ``folder`` (a folder written by ``label sample``); ``token``: required on every request."""
    folder = Path(folder)
    groups = read_groups(folder)
    sizes = [len(g["images"]) for g in groups]
    images = {name for g in groups for name in g["images"]}
    for name in images:
        if not (folder / name).is_file():
            raise ConfigError(f"{folder}/groups.jsonl names {name}, which is missing")
    files: dict[str, LabelFile] = {}

    def label_file(name) -> LabelFile:
        name = check_annotator(name)
        if name not in files:
            files[name] = LabelFile(folder, name, sizes)
        return files[name]

    def next_unlabelled(f: LabelFile, after: int) -> int | None:
        """The first group after ``after`` (wrapping round) that the annotator has not labelled."""
        for d in range(1, len(groups) + 1):
            g = (after + d) % len(groups)
            if g not in f.groups:
                return g
        return None

    def state(f: LabelFile, after: int = -1) -> dict:
        return {"total": len(groups), "labelled": len(f.groups), "next": next_unlabelled(f, after),
                "first": next_unlabelled(f, -1)}

    async def body(request: Request) -> dict:
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPException(400, f"the request body is not JSON ({e})") from e
        if not isinstance(data, dict):
            raise HTTPException(400, "the request body must be a JSON object")
        return data

    def group_index(value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(groups):
            raise HTTPException(404 if isinstance(value, int) else 400, f"no group {value!r} (0..{len(groups) - 1})")
        return value

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def get_group(request: Request) -> Response:
        try:
            g = group_index(int(request.path_params["g"]))
        except ValueError:
            return error(400, "the group must be a number")
        f = label_file(request.query_params.get("annotator", ""))
        grp = groups[g]
        return JSONResponse({"group": g, "prompt": grp["prompt"], "images": [f"/{n}" for n in grp["images"]],
                             "scores": f.groups.get(g), **state(f, g)})

    async def post_label(request: Request) -> Response:
        data = await body(request)
        f = label_file(data.get("annotator", ""))
        g = group_index(data.get("group"))
        best, ranking, broken = data.get("best"), data.get("ranking"), data.get("broken", [])
        if not isinstance(broken, list) or (ranking is not None and not isinstance(ranking, list)):
            return error(400, "'broken' and 'ranking' must be lists of image positions")
        f.set(g, scores_for(sizes[g], best, broken, ranking))
        return JSONResponse({"group": g, "scores": f.groups[g], **state(f, g)})

    async def post_undo(request: Request) -> Response:
        data = await body(request)
        f = label_file(data.get("annotator", ""))
        g = f.undo()
        return JSONResponse({"group": g, **state(f)})

    async def get_summary(request: Request) -> Response:
        return JSONResponse(summary(folder))

    async def summary_page(request: Request) -> Response:
        s = summary(folder)
        rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{v.get('groups', 0)} / {len(groups)}</td><td>{v['pairs']}</td>"
                       f"<td>{v['preferences']}</td><td>{v['ties']}</td></tr>" for a, v in sorted(s["annotators"].items()))
        agree = "".join(f"<tr><td>{html.escape(x['annotators'][0])} · {html.escape(x['annotators'][1])}</td>"
                        f"<td>{x['shared_pairs']}</td><td>{x['agreement']:.3f}</td>"
                        f"<td>{'–' if x['kappa'] is None else format(x['kappa'], '.3f')}</td></tr>" for x in s["agreement"])
        return HTMLResponse(SUMMARY.format(folder=html.escape(str(folder)), rows=rows or NONE.format(5),
                                           agree=agree or NONE.format(4)))

    async def image(request: Request) -> Response:
        name = "images/" + request.path_params["name"]
        if name not in images:  # only the folder's group images: no other path can be reached
            return error(404, "no such image")
        return FileResponse(folder / name, media_type="image/png")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, exc.detail)

    async def user_error(request: Request, exc: ConfigError) -> Response:
        return error(400, str(exc))

    async def server_error(request: Request, exc: Exception) -> Response:
        return error(500, f"internal error ({type(exc).__name__}); the labels written so far are kept")

    return Starlette(
        routes=[Route("/", page), Route("/summary", summary_page), Route("/api/group/{g}", get_group),
                Route("/api/label", post_label, methods=["POST"]), Route("/api/undo", post_undo, methods=["POST"]),
                Route("/api/summary", get_summary), Route("/images/{name}", image)],
        middleware=[Middleware(TokenGate, token=token)],
        exception_handlers={HTTPException: http_error, ConfigError: user_error, Exception: server_error})


NONE = "<tr><td colspan={}>none yet</td></tr>"
SUMMARY = """<!doctype html><html><head><meta charset="utf-8"><title>Labels: summary</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:.3em .8em}}</style></head><body>
<h1>Labels in {folder}</h1><p><a href="/">back to labelling</a></p>
<h2>Per annotator</h2><table id="annotators"><tr><th>annotator</th><th>groups</th><th>pairs</th><th>preferences</th>
<th>ties</th></tr>{rows}</table>
<h2>Agreement where groups overlap</h2><table id="agreement"><tr><th>annotators</th><th>shared pairs</th>
<th>same verdict</th><th>Cohen's kappa</th></tr>{agree}</table></body></html>"""


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> None:
    """Run the page until Ctrl-C. A token is made (and printed) when ``host`` is not a loopback address."""
    import uvicorn

    if token is None and host not in LOOPBACK:
        token = secrets.token_urlsafe(16)
    app = create_app(folder, token)
    shown = f"[{host}]" if ":" in host else host
    print(f"labelling {folder}: open http://{shown}:{port}/" + (f"?token={token}" if token else ""), flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


class BackgroundServer:
    """The app served by uvicorn in a thread, for scripts and tests::

        with BackgroundServer("labels/") as url:   # http://127.0.0.1:<free port>
            ...
    """

    def __init__(self, folder: str | Path, token: str | None = None, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(folder, token), host=host, port=port,
                                                    log_level="warning"))

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the label server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

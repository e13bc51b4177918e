"""The door's ASGI plumbing: reads each request in front of Gradio's routes (its body capped before it is read)
and puts every queue join to the door's rules (`space.admission`), answering a refusal itself."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from space.admission import EVENTS, INTERNAL, Door, Refused, caller_key, only_uploaded

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # nothing to admit: no body, no job
CALL_ROUTE = re.compile(r"/call/(?:v2/)?([^/]+)$")  # Gradio's REST API: POST /gradio_api/call/<api_name>


@dataclass
class Join:
    """One request as the door counted it: withdrawn at most once, when Gradio refuses it or never answers."""

    door: Door
    caller: str
    event: str | None
    data: object
    withdrawn: bool = False

    def withdraw(self) -> None:
        if self.event is not None and not self.withdrawn:
            self.withdrawn = True
            self.door.withdraw(self.caller, self.event, self.data)


class AdmissionMiddleware:
    """ASGI middleware in front of Gradio's routes: refuses a body over `body_bytes` (uploads excepted: Gradio
    caps them file by file as they stream) before it is read, and sends every queue join through the door.
    A refusal is answered the way Gradio answers a failed validator (422), so gradio_client raises it with the
    message and the page shows it."""

    def __init__(self, app, door: Door, event_of: Callable[[int | None], str | None], trusted_hops: int,
                 upload_root: str):
        self.app, self.door, self.event_of, self.trusted_hops = app, door, event_of, trusted_hops
        self.upload_root = Path(upload_root).resolve()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = headers.get("content-length", "")
        path = scope["path"].rstrip("/")
        caller = caller_key((scope.get("client") or (None,))[0], headers, self.trusted_hops)
        if path.endswith("/gradio_api/upload"):  # files: Gradio caps each as it streams; the door counts them
            return await self._upload(scope, receive, send, caller, declared)
        if "/stream/" in path:  # no event of ours streams: nothing may swap a queued job's arguments
            return await _answer(send, 404, "This server has no streaming events.")
        body = await self._body(receive, send, declared)
        if body is None:  # too big (answered) or the client left
            return None
        try:
            join = self._admit(caller, path, scope["method"], _json(body))
        except Refused as refusal:
            return await _answer(send, 422, [{"__type__": "validate", "is_valid": False,
                                              "message": str(refusal), "parameter_name": "request"}])
        return await self._forward(scope, receive, send, body, join)

    async def _body(self, receive, send, declared: str) -> bytes | None:
        """The whole body, never more than the cap (a chunked body has no length up front); None when it was
        refused here as too big or its client left."""
        limit = self.door.limits.body_bytes
        too_big = f"A request may carry at most {limit // 1024} KB."
        if declared.isdigit() and int(declared) > limit:
            return await _answer(send, 413, too_big)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await _answer(send, 413, too_big)
        return body

    def _admit(self, caller: str, path: str, method: str, payload: dict) -> Join:
        """The request put to the door: a new page session spends a session token, a queue join is admitted
        (file arguments uploaded here only); Refused says why not."""
        event = self._event(path, payload) if method == "POST" else None
        data = payload.get("data", payload if "/call/v2/" in path else None)
        if isinstance(payload.get("session_hash"), str):  # any route that would make a page session
            self.door.take_session(caller, payload["session_hash"])
        if event is not None:
            only_uploaded(payload, self.upload_root)
            self.door.admit(caller, event, data)
        return Join(self.door, caller, event, data)

    async def _forward(self, scope, receive, send, body: bytes, join: Join):
        """Gradio gets the body the door read; a join it refuses (any status but 200) or never answers is
        withdrawn, before the caller hears of it, so their next request already sees the place free."""
        sent, started = False, False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def watch(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] != 200:
                    join.withdraw()
            await send(message)

        try:
            return await self.app(scope, replay, watch)
        finally:
            if not started:
                join.withdraw()

    async def _upload(self, scope, receive, send, caller: str, declared: str):
        """An upload, counted against the caller's and everyone's budget by the bytes that actually arrive."""
        if not declared.isdigit():
            return await _answer(send, 411, "An upload must declare its length.")
        try:
            entry = self.door.take_upload(caller, int(declared))
        except Refused as refusal:
            return await _answer(send, 429, str(refusal))
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        try:
            return await self.app(scope, counted, send)
        finally:
            self.door.settle_upload(entry, received)


    def _event(self, path: str, payload: dict) -> str | None:
        """The event a request joins the queue for (None: not a join). The page joins with a function index in
        the body; a script's POST /call/<api_name> (Gradio's simple REST API) names it in the path."""
        if path.endswith("/queue/join"):
            return self.event_of(payload.get("fn_index"))
        named = CALL_ROUTE.search(path)
        return None if named is None else (named.group(1) if named.group(1) in EVENTS else INTERNAL)


def _json(body: bytes) -> dict:
    """A request body's JSON object; {} when it is none (Gradio answers a malformed request itself)."""
    try:
        payload = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        return {}
    return payload if isinstance(payload, dict) else {}


async def _answer(send, status: int, detail) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})

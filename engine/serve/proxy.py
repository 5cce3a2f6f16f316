"""The one door to a model server: an ASGI app on the public host:port that checks each request (engine/serve/gate.py),
the API key, and forwards what passes to the backend on its private Unix socket, the exact path it checked.
Answered here, never forwarded: the web chat page at / and /chat (GET, no key: engine/serve/page.py), /v1/models
(transformers serve lists the Hugging Face cache there, which a local export is not in, and fails without a cache)
and /v1/models/<name>."""

from __future__ import annotations

import hmac
import json
import socket
import threading
import time

from engine.errors import ServeError
from engine.serve.deadline import deadline_protocol
from engine.serve.gate import MODEL_PREFIX, PAGES, Refusal, route, screen
from engine.serve.page import chat_page

OPEN = {b"/health", *(path.encode() for path in PAGES)}  # no key: the health probe and the static chat page

# hop-by-hop headers, the ones httpx and uvicorn set again, and the client's key (the backend has no use for it)
NOT_FORWARDED = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                 "transfer-encoding", "upgrade", "host", "content-length", "authorization"}


class TooLarge(Exception):
    """A body (sent chunked, or longer than it declared) that went over the limit while it was read."""


async def send_json(send, status: int, payload: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


async def send_error(send, status: int, message: str, kind: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """An OpenAI-style error; the connection closes with it (the request's body is left unread)."""
    await send_json(send, status, {"error": {"message": message, "type": kind, "code": status}},
                    [*headers, (b"connection", b"close")])


async def read_body(receive, limit: int) -> bytes | None:
    """The request body, or TooLarge as soon as it passes `limit` bytes; None when the client went away."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            raise TooLarge
        if not message.get("more_body"):
            return bytes(body)


# hand-written because neither backend can be trusted with its own door (transformers serve has no key and serves
# /load_model and /reset; vLLM's key covers only /v1) and no reverse proxy ships with the project's dependencies;
# uvicorn (the server), h11 (parsing), httpx (the Unix-socket client) and Starlette (streaming) do all the HTTP
def proxy_app(socket_path: str, api_key: str | None, served_model_name: str, body_limit: int):
    import httpx
    from starlette.background import BackgroundTask
    from starlette.responses import StreamingResponse

    client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=socket_path), base_url="http://backend",
                               timeout=httpx.Timeout(None, connect=5))
    model = {"id": served_model_name, "object": "model", "created": int(time.time()), "owned_by": "tuneline"}

    def authorized(headers: list[tuple[bytes, bytes]]) -> bool:
        value = next((v for k, v in headers if k.lower() == b"authorization"), b"")
        scheme, _, token = value.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served (ws="none")
        headers, raw_path = scope["headers"], scope["raw_path"]
        try:
            screen(raw_path, headers)  # before anything else, the key too
            if raw_path not in OPEN and api_key is not None and not authorized(headers):
                return await send_error(send, 401, "a valid API key is required: send `Authorization: Bearer "
                                                   "<key>`", "invalid_request_error",
                                        [(b"www-authenticate", b"Bearer")])
            path = route(scope["method"], raw_path, headers, body_limit)
        except Refusal as refusal:
            kind = "not_found_error" if refusal.status == 404 else "invalid_request_error"
            allow = [(b"allow", refusal.allow.encode())] if refusal.allow else []
            return await send_error(send, refusal.status, str(refusal), kind, allow)
        if path in PAGES:
            body, page_headers = chat_page()
            await send({"type": "http.response.start", "status": 200, "headers": page_headers})
            return await send({"type": "http.response.body", "body": body})
        if path == "/v1/models":
            return await send_json(send, 200, {"object": "list", "data": [model]})
        if path.startswith(MODEL_PREFIX):
            if path.removeprefix(MODEL_PREFIX) == served_model_name:
                return await send_json(send, 200, model)
            return await send_error(send, 404, f"the model {path.removeprefix(MODEL_PREFIX)!r} does not exist; this "
                                               f"server serves {served_model_name!r}", "not_found_error")
        try:
            body = await read_body(receive, body_limit)
        except TooLarge:
            return await send_error(send, 413, f"the request body is over the limit of {body_limit} bytes "
                                               "(serve.max_request_bytes)", "invalid_request_error")
        if body is None:
            return
        forwarded = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers
                     if k.decode("latin-1").lower() not in NOT_FORWARDED]
        # the allow-listed path as checked, without the query string (no served route reads one)
        upstream = client.build_request(scope["method"], path, headers=forwarded, content=body)
        try:
            response = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            return await send_error(send, 502, f"the model server did not answer: {type(exc).__name__}",
                                    "server_error")
        # server-sent events pass as they come; a client that goes away closes the backend stream
        await StreamingResponse(response.aiter_raw(), response.status_code,
                                headers={k: v for k, v in response.headers.items() if k.lower() not in NOT_FORWARDED},
                                background=BackgroundTask(response.aclose))(scope, receive, send)

    return app


class AuthProxy:
    """proxy_app on its own thread, served by uvicorn on a socket bound before the backend starts."""

    def __init__(self, host: str, port: int, socket_path: str, api_key: str | None, served_model_name: str,
                 body_limit: int, read_timeout: float):
        self.host, self.port = host, port
        self.app = proxy_app(socket_path, api_key, served_model_name, body_limit)
        self.read_timeout = read_timeout
        self.sock: socket.socket | None = None
        self.server = None
        self.thread: threading.Thread | None = None

    def bind(self) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise ServeError(f"port {self.port} on {self.host} is already in use: set serve.port or pass --port "
                             f"({exc.strerror})") from None
        sock.listen(128)
        self.sock = sock

    def start(self, timeout: float = 30) -> None:
        import uvicorn
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off", ws="none",
                                http=deadline_protocol(self.read_timeout))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name=f"tuneline-proxy-{self.port}")
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise ServeError(f"the API-key proxy on {self.host}:{self.port} did not start within {timeout:.0f} s")

    def stop(self, timeout: float = 5) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout)
            if self.thread.is_alive():
                self.server.force_exit = True  # open streams do not hold the stop up for long
                self.thread.join(timeout)
        if self.sock is not None:
            self.sock.close()

"""What the serving proxy lets through, decided on the request line and headers before anything is read or
forwarded: no dot segment, encoded separator or double slash in the path; only the allow-listed routes, each with
its method; no request that frames its body twice (Transfer-Encoding with Content-Length); no declared body over
the limit. Everything is decided on the raw bytes the client sent, never on a decoded or normalized copy."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

# (method, path) the backends answer for clients; everything else (transformers serve's /load_model and /reset,
# vLLM's /tokenize, /metrics, /invocations, ...) stays behind the proxy
ROUTES = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET", "/health": "GET"}
PAGES = {"/": "GET", "/chat": "GET"}  # the web chat page (engine/serve/page.py): answered by the proxy, no key
MODEL_PREFIX = "/v1/models/"  # GET /v1/models/<served name>: answered by the proxy, never forwarded
ENCODED_SEPARATORS = (b"%2f", b"%5c")  # '/' and '\' hidden from a prefix check, decoded later by some servers


class Refusal(Exception):
    """A request the proxy answers itself: `status` and a one-line reason."""

    def __init__(self, status: int, message: str, allow: str | None = None):
        super().__init__(message)
        self.status, self.allow = status, allow


def decoded(raw: bytes, rounds: int = 4) -> bytes:
    """`raw` percent-decoded until it stops changing (so %252e counts as a dot too), at most `rounds` times."""
    for _ in range(rounds):
        once = unquote_to_bytes(raw)
        if once == raw:
            return raw
        raw = once
    return raw


def path_problem(raw_path: bytes) -> str | None:
    """Why this request target may not be served (None: it may be routed), read from the raw bytes."""
    if not raw_path.startswith(b"/"):
        return "the path must start with '/' (origin form)"
    lowered = raw_path.lower()
    if any(separator in lowered for separator in ENCODED_SEPARATORS) or b"\\" in raw_path:
        return "the path holds an encoded or backslash separator"
    plain = decoded(raw_path)
    if b"\\" in plain or b"\x00" in plain:
        return "the path holds an encoded or backslash separator"
    if b"//" in raw_path or b"//" in plain:
        return "the path holds a double slash"
    if any(segment in (b".", b"..") for segment in plain.split(b"/")):
        return "the path holds a '.' or '..' segment"
    return None


def screen(raw_path: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """A Refusal (400) for a request that could mean something other than what it seems: a path another server
    may resolve to another route, or a body framed twice (a smuggled second request). First, before the key."""
    names = [name.lower() for name, _ in headers]
    if b"transfer-encoding" in names and b"content-length" in names:
        raise Refusal(400, "Transfer-Encoding and Content-Length together: the body is framed twice")
    if (problem := path_problem(raw_path)) is not None:
        raise Refusal(400, f"{problem}: {raw_path[:200].decode('latin-1')!r} is refused")


def route(method: str, raw_path: bytes, headers: list[tuple[bytes, bytes]], body_limit: int) -> str:
    """The allow-listed path a screened request goes to (the exact bytes checked, as text), or a Refusal: 404 off
    the allow-list, 405 for the wrong method, 413 for a declared body over `body_limit` bytes."""
    path = raw_path.decode("latin-1")
    expected = "GET" if path.startswith(MODEL_PREFIX) else ROUTES.get(path) or PAGES.get(path)
    if expected is None:
        raise Refusal(404, f"{path[:200]} is not served (served: {', '.join([*ROUTES, *PAGES])})")
    if method != expected:
        raise Refusal(405, f"{method} {path} is not served: {path} takes {expected}", allow=expected)
    for name, value in headers:
        if name.lower() == b"content-length" and value.strip().isdigit() and int(value) > body_limit:
            raise Refusal(413, f"the request body is {int(value)} bytes, over the limit of {body_limit} "
                               "(serve.max_request_bytes)")
    return path

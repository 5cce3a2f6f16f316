"""The web chat page (LlamaBoard's Chat tab): one static HTML file with plain JavaScript (no CDN: a server may have
no internet), served by the proxy itself at / and /chat, GET only, without a key. The page sends the key the user
types, as a Bearer header, with its own calls to /v1/models and /v1/chat/completions (stream: true).

Its Content-Security-Policy allows exactly its own inline script and style (by SHA-256) and requests to its own
origin: nothing else runs or loads, whatever a model writes (the page also sets model text only as text)."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from pathlib import Path

PAGE_FILE = Path(__file__).with_name("chat.html")


def inline_hashes(html: str, tag: str) -> list[str]:
    """CSP source expressions ('sha256-…') for each inline <tag> element's content."""
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies]


@functools.cache
def chat_page() -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(the page's bytes, the headers it is served with)."""
    html = PAGE_FILE.read_text(encoding="utf-8")
    policy = (f"default-src 'none'; script-src {' '.join(inline_hashes(html, 'script'))}; "
              f"style-src {' '.join(inline_hashes(html, 'style'))}; connect-src 'self'; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'none'")
    body = html.encode()
    return body, [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                  (b"content-security-policy", policy.encode()), (b"x-content-type-options", b"nosniff"),
                  (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]

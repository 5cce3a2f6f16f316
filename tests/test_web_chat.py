"""The web chat page as a person uses it: a real server (tiny model) behind its proxy serves the page without a key,
a headless Chromium opens it, types a key, a system prompt and a question, presses Send and sees the answer arrive
streamed; `tuneline chat --web` starts the same server and prints the page's address."""

import json
import os
import sys
import urllib.error
import urllib.request

import pytest

from engine.serve.server import Server, chat_completion, free_port
from tests.browser import Browser
from tests.processes import started

KEY = "web-chat-key-0123456789"
SYSTEM = "You answer in one short line."
QUESTION = "Add the two numbers.\n120 + 345"
MAX_TOKENS = 12
PAGE_S = 120  # a page element appearing, or an answer arriving from the CPU server

pytestmark = pytest.mark.slow

# the page's calls, recorded as they leave it (the request the server got: URL, Authorization header, body)
RECORD_FETCH = """(() => { window.sent = []; const original = window.fetch;
  window.fetch = (url, options) => { window.sent.push({url: String(url), auth: (options && options.headers &&
    options.headers.Authorization) || null, body: (options && options.body) || null}); return original(url, options); };
  return true; })()"""


@pytest.fixture(scope="module")
def server(deployment_dir):
    with Server(deployment_dir, "huggingface", port=free_port(), timeout=600, api_key=KEY) as running:
        yield running


@pytest.fixture
def page(server, tmp_path):
    browser = Browser(tmp_path / "profile")
    try:
        browser.goto(f"http://127.0.0.1:{server.port}/chat")
        browser.wait_for("document.readyState === 'complete' && !!document.getElementById('send')", PAGE_S,
                         "the chat page")
        yield browser
    finally:
        browser.close()


def whole(answer: str) -> str:
    """An answer without the tail a token limit can leave inside a multi-byte character (tests/test_serve.py)."""
    return answer.strip().rstrip("\ufffd").strip()


def ask(page: Browser, question: str) -> dict:
    """Type `question`, press Send, wait for the answer to finish; its text, chunk count and class."""
    page.evaluate(f"document.getElementById('prompt').value = {json.dumps(question)}; "
                  "document.getElementById('send').click(); true")
    page.wait_for("document.querySelector('.turn.assistant[data-done], .turn.error[data-done]') !== null", PAGE_S,
                  "the answer to finish")
    return page.evaluate("""(() => { const a = document.querySelector('[data-done]');
        return {text: a.textContent, chunks: Number(a.dataset.chunks), kind: a.className}; })()""")


def set_field(page: Browser, field: str, value) -> None:
    page.evaluate(f"document.getElementById({json.dumps(field)}).value = {json.dumps(str(value))}; true")


def test_the_page_streams_the_greedy_answer_with_the_system_prompt_and_the_key(server, page):
    page.evaluate(RECORD_FETCH)
    set_field(page, "key", KEY)
    set_field(page, "system", SYSTEM)
    set_field(page, "max_tokens", MAX_TOKENS)
    answer = ask(page, QUESTION)
    assert answer["kind"] == "turn assistant", answer
    expected = chat_completion(server.base_url, "tiny-base", [{"role": "system", "content": SYSTEM},
                                                              {"role": "user", "content": QUESTION}], MAX_TOKENS, KEY)
    assert whole(answer["text"]) and whole(answer["text"]) == whole(expected["answer"])
    assert answer["chunks"] > 1  # it arrived as it was generated, not in one piece
    sent = page.evaluate("window.sent")
    (completion,) = [s for s in sent if s["url"].endswith("/v1/chat/completions")]
    body = json.loads(completion["body"])
    assert completion["auth"] == f"Bearer {KEY}" and body["stream"] is True and body["model"] == "tiny-base"
    assert body["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0, 1, MAX_TOKENS)
    assert page.evaluate("document.getElementById('model').textContent") == "model: tiny-base"


def test_without_the_key_the_page_says_so_as_text(page):
    answer = ask(page, "<img src=x onerror=alert(1)>")
    assert answer["kind"] == "turn error" and "API key" in answer["text"]
    # the question is shown as the text it is, never parsed as HTML
    assert page.evaluate("document.querySelectorAll('#log img').length") == 0
    assert page.evaluate("document.querySelector('.turn.user').textContent") == "<img src=x onerror=alert(1)>"


def test_the_page_is_open_get_only_and_locked_to_its_own_origin(server):
    for path in ("/", "/chat"):
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=30) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "text/html; charset=utf-8"
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "connect-src 'self'" in policy
            assert "<title>tuneline chat</title>" in response.read().decode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{server.port}/chat", b"{}", method="POST"),
                               timeout=30)
    assert refused.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/v1/models", timeout=30)  # the API still needs it
    assert refused.value.code == 401


def test_tuneline_chat_web_prints_the_page_address(tiny_model_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("TUNELINE_API_KEY", None)
    command = [sys.executable, "-m", "pipelines.cli", "chat", str(tiny_model_dir), "--web", "--port", str(port)]
    with started(command, tmp_path / "logs", env=env) as child:
        child.wait_for_output(f"chat in a browser: http://127.0.0.1:{port}/chat", 600, "the page's address")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/chat", timeout=30) as response:
            assert response.status == 200

"""The sealed server: a REAL server (tiny model) sent the walk-arounds an operator found, over a raw socket so no
client normalizes the path first; the backend reachable only through the proxy; smuggling, oversize bodies and slow
clients refused; a public address without a key refused unless the operator insists."""

import json
import os
import socket
import stat
import time

import pytest

from engine.errors import ServeError
from engine.recipe import load_recipe
from engine.serve.gate import path_problem
from engine.serve.server import Server, check_exposure, free_port
from pipelines.cli import main

KEY = "test-key-0123456789"
BODY_LIMIT = 4096
READ_TIMEOUT = 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(deployment_dir):
    server = Server(deployment_dir, "huggingface", port=free_port(), timeout=180, api_key=KEY,
                    max_request_bytes=BODY_LIMIT, request_timeout=READ_TIMEOUT)
    try:
        yield server.start()
    finally:
        server.stop()


def exchange(port: int, request: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """(status, whole answer) of `request` sent byte for byte on a fresh connection, read until the server closes
    it (the requests say `Connection: close`); status 0: the server closed without answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = rest(sock, timeout)
    return (int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0), answer


def request(method: str, target: str, body: bytes = b"", key: str | None = KEY, **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"Authorization: Bearer {key}"] if key else []
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if body and not {"Content_Length", "Transfer_Encoding"} & set(headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chat(port: int) -> dict:
    """One chat completion through the OpenAI client, as any application sends it."""
    from openai import OpenAI
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=120)
    return client.chat.completions.create(model="tiny-base", max_tokens=4, temperature=0,
                                          messages=[{"role": "user", "content": "Add 1 + 2"}]).model_dump()


BYPASSES = [  # (method, raw request target, the status the proxy answers)
    ("GET", "/v1/../load_model", 400), ("POST", "/v1/%2e%2e/reset", 400), ("POST", "/v1/%2E%2E/reset", 400),
    ("POST", "/v1/%2e./reset", 400), ("POST", "/v1/.%2E/reset", 400), ("POST", "/v1/%252e%252e/reset", 400),
    ("GET", "//v1/models", 400), ("GET", "/v1/./models", 400), ("POST", "/v1%2f..%2freset", 400),
    ("POST", "/v1%2F..%2Freset", 400), ("POST", "/v1/models/../../reset", 400), ("GET", "/v1/models/..", 400),
    ("POST", "/v1\\..\\reset", 400), ("GET", "http://127.0.0.1/load_model", 400),
    ("GET", "/load_model", 404), ("POST", "/reset", 404), ("POST", "/v1/responses", 404),
    ("POST", "/v1/audio/transcriptions", 404), ("GET", "/v1/chat/completions", 405), ("DELETE", "/v1/models", 405),
]


def test_every_walk_around_is_refused_and_the_model_still_answers(server):
    answers = {(method, target): exchange(server.port, request(method, target)) for method, target, _ in BYPASSES}
    statuses = {key: status for key, (status, _) in answers.items()}
    assert statuses == {(method, target): expected for method, target, expected in BYPASSES}
    for status, answer in answers.values():  # each refusal says why, in the OpenAI error shape
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == status
    assert server.process.poll() is None
    reply = chat(server.port)
    assert reply["choices"][0]["message"]["role"] == "assistant"


def test_the_key_is_checked_after_the_path_and_before_the_allow_list(server):
    assert exchange(server.port, request("GET", "/v1/models", key=None))[0] == 401
    assert exchange(server.port, request("GET", "/load_model", key=None))[0] == 401  # no map of routes for strangers
    assert exchange(server.port, request("GET", "/v1/../load_model", key=None))[0] == 400
    assert exchange(server.port, request("GET", "/health", key=None))[0] == 200  # the probe needs no key


def listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def test_the_backend_cannot_be_reached_around_the_proxy(server):
    assert not socket_inodes(server.process.pid) & listening_tcp_inodes()  # no TCP port at all
    directory = os.path.dirname(server.socket_path)
    info = os.stat(directory)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    assert stat.S_ISSOCK(os.stat(server.socket_path).st_mode)
    if os.getuid() != 0:
        pytest.skip("another user's view needs root to take it (setuid)")
    assert connect_as(65534, server.socket_path) == "refused"  # nobody: the directory keeps it out
    assert connect_as(os.getuid(), server.socket_path) == "connected"  # the same probe, as the owner, gets in


def connect_as(uid: int, path: str) -> str:
    """Whether user `uid` can connect to the Unix socket `path`, tried in a forked child that takes that uid."""
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        code = 1
        try:
            if uid != os.getuid():
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(5)
                probe.connect(path)
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "connected", 13: "refused"}.get(os.waitstatus_to_exitcode(status), "failed")


def test_a_body_framed_twice_is_refused(server):
    smuggled = request("POST", "/v1/chat/completions", b"0\r\n\r\nGET /load_model HTTP/1.1\r\n\r\n",
                       Content_Length="5", Transfer_Encoding="chunked")
    status, answer = exchange(server.port, smuggled)
    assert status == 400 and b"framed twice" in answer


def test_an_oversized_body_gets_413_before_it_is_read(server):
    status, answer = exchange(server.port, request("POST", "/v1/chat/completions", b"{" * 100,
                                                   Content_Length=str(50 * 2**20)))
    assert status == 413 and b"over the limit of 4096" in answer  # answered at once, not 408 after the deadline
    chunks = b"".join(b"400\r\n" + b"x" * 1024 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"  # 8 KiB, undeclared
    assert exchange(server.port, request("POST", "/v1/chat/completions", chunks, Transfer_Encoding="chunked"))[0] == 413
    assert exchange(server.port, request("POST", "/v1/chat/completions", b"x" * (BODY_LIMIT + 1)))[0] == 413


def trickle(port: int, data: bytes, pace: float = 0.25, limit: float = 20) -> tuple[float, bytes]:
    """Send `data` a byte every `pace` seconds until the server answers or closes; (seconds it took, answer)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=pace) as sock:
        for byte in data:
            if time.monotonic() - started > limit:
                break
            try:
                sock.sendall(bytes([byte]))
                answer = sock.recv(65536)  # waits `pace` at most: the pace of the trickle
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):  # the server closed between two bytes
                answer = b""
            return time.monotonic() - started, answer + rest(sock, limit)
    return time.monotonic() - started, b"(never cut)"


def rest(sock: socket.socket, timeout: float) -> bytes:
    """What is left to read before the server's close (a reset after it reports the end too)."""
    sock.settimeout(timeout)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


# the event loop's timers run from a loop time cached at the start of its iteration (libuv: milliseconds), so a
# deadline can fire a little before its due time: CI saw 1.9998 s for a 2 s deadline
TIMER_GRAIN = 0.05


def test_a_slow_client_is_cut_after_the_read_timeout(server):
    headers = request("GET", "/v1/models") * 10  # more bytes than the trickle can send before the timeout
    seconds, answer = trickle(server.port, headers)
    assert answer.startswith(b"HTTP/1.1 408") and READ_TIMEOUT - TIMER_GRAIN <= seconds < READ_TIMEOUT + 3
    body = request("POST", "/v1/chat/completions", Content_Length="1000") + b"{" * 1000  # headers whole, body slow
    seconds, answer = trickle(server.port, body, pace=0.01)
    assert answer.startswith(b"HTTP/1.1 408") and READ_TIMEOUT - TIMER_GRAIN <= seconds < READ_TIMEOUT + 3
    with socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT + 5) as silent:
        started = time.monotonic()
        assert silent.recv(65536).startswith(b"HTTP/1.1 408")  # a connection that sends nothing is cut too
        assert time.monotonic() - started < READ_TIMEOUT + 3
    assert chat(server.port)["choices"]  # a whole request still gets its answer, however long generation takes


@pytest.mark.parametrize("target, problem", [
    (b"/v1/chat/completions", None), (b"/v1/models/tiny-base", None), (b"/health", None),
    (b"/v1/../x", "'.' or '..' segment"), (b"/v1/%2E%2e/x", "'.' or '..' segment"), (b"/v1/..", "'.' or '..'"),
    (b"/v1/%25%32%65%25%32%65/x", "'.' or '..'"), (b"/v1//x", "double slash"), (b"/v1/%2F/x", "separator"),
    (b"/v1/%5C..", "separator"), (b"v1/models", "must start with '/'"), (b"*", "must start with '/'"),
])
def test_the_path_check_reads_the_raw_bytes(target, problem):
    found = path_problem(target)
    assert found is None if problem is None else problem in found


def test_a_public_address_without_a_key_is_refused(deployment_dir, capsys, monkeypatch):
    with pytest.raises(ServeError, match="serving on 0.0.0.0:8555 without an API key is refused: .*--insecure-no-key"):
        Server(deployment_dir, "huggingface", host="0.0.0.0", port=8555)
    Server(deployment_dir, "huggingface", host="0.0.0.0", port=8555, insecure_no_key=True)  # the operator's choice
    Server(deployment_dir, "huggingface", host="0.0.0.0", port=8555, api_key=KEY)
    check_exposure("127.0.0.1", 8555, None, False)  # loopback needs no key
    check_exposure("localhost", 8555, None, False)
    monkeypatch.delenv("TUNELINE_API_KEY", raising=False)
    assert main(["serve", str(deployment_dir), "--dry-run", "--host", "0.0.0.0", "--port", "8555"]) == 2  # refused
    out, err = capsys.readouterr()
    assert "without an API key is refused" in err and len(err.strip().splitlines()) == 1 and out == ""
    assert main(["serve", str(deployment_dir), "--dry-run", "--host", "0.0.0.0", "--port", "8555",
                 "--insecure-no-key"]) == 0
    out, err = capsys.readouterr()
    assert "warning: serving on 0.0.0.0:8555 without an API key (--insecure-no-key)" in err
    assert "API key: none" in out
    assert main(["serve", str(deployment_dir), "--dry-run", "--host", "0.0.0.0", "--port", "8555",
                 "--set", "serve.insecure_no_key=true"]) == 0


def test_the_serve_limits_are_recipe_keys():
    recipe = load_recipe("tiny")[0]
    assert (recipe.serve.max_request_bytes, recipe.serve.request_timeout_seconds) == (2**20, 30)
    assert recipe.serve.insecure_no_key is False
    assert load_recipe("tiny", {"serve.insecure_no_key": True})[0].serve.insecure_no_key is True

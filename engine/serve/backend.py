"""`python -m engine.serve.backend SOCKET [transformers serve options]`: `transformers serve` listening on the Unix
socket SOCKET, in a directory only its owner can enter, instead of a TCP port any local user can reach.

transformers serve (5.x) has neither a socket nor an API-key option: it builds `uvicorn.Config(app, host, port)`
itself, so this process hands it a Config that binds SOCKET instead (uvicorn's own `uds`), and ignores host and
port. The proxy in front (engine/serve/proxy.py) is the only client."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path


def private_directory_problem(directory: Path) -> str | None:
    """Why `directory` is not private to this user (None: it is: owned by us, no access for group or others)."""
    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if info.st_uid != os.getuid():
        return f"{directory} belongs to uid {info.st_uid}, not to this user ({os.getuid()})"
    if info.st_mode & 0o077:
        return f"{directory} has mode {stat.S_IMODE(info.st_mode):o}; expected 700"
    return None


def serve_on_socket(socket_path: Path, options: list[str]) -> None:
    import uvicorn
    if (problem := private_directory_problem(socket_path.parent)) is not None:
        raise SystemExit(f"tuneline backend: the socket's directory must be private: {problem}")

    # the one way in: transformers serve constructs uvicorn.Config itself and offers no socket option
    class UnixSocketConfig(uvicorn.Config):
        def __init__(self, app, host=None, port=None, **kwargs):
            super().__init__(app, uds=str(socket_path), **kwargs)

    uvicorn.Config = UnixSocketConfig
    from transformers.cli.transformers import main
    sys.argv = ["transformers", "serve", *options]
    main()


if __name__ == "__main__":
    serve_on_socket(Path(sys.argv[1]), sys.argv[2:])

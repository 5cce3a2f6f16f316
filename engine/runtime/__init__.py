"""Processes: start-up of heavy imports, and stopping a child process group in bounded time."""

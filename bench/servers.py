"""A throwaway redis-server for the benchmark, so that millions of filler keys and pickles from the
dogpile peer never touch a Redis anybody else uses."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

import redis


class ThrowawayRedis:
    def __init__(self, url: str | None) -> None:
        self._url = url
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: str | None = None

    def __enter__(self) -> str:
        if self._url:
            return self._url
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is not installed: pass --redis-url")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._directory = tempfile.mkdtemp(prefix="bench-redis-")
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._directory,
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        return f"redis://127.0.0.1:{port}/0"

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

"""A throwaway MariaDB with its binary log on (ROW format): for the binlog walkthrough, the
watcher's tests and its benchmark. Its own data directory and free loopback port, stopped by its
own pid: a shared server is never reconfigured.

    with ThrowawayMariaDB() as server:
        server.url  # mysql+pymysql://root@127.0.0.1:PORT/
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

INSTALL = "mariadb-install-db"
SERVER = "mariadbd"


class ServerMissing(RuntimeError):
    """``mariadbd`` or ``mariadb-install-db`` is not installed."""


class ThrowawayMariaDB:
    """``mariadb-install-db`` into a temporary directory, then ``mariadbd`` with ``--log-bin``,
    ``--binlog-format=ROW``, ``--server-id=1`` and the event scheduler on."""

    def __init__(self, *extra: str, driver: str = "pymysql") -> None:
        missing = [name for name in (INSTALL, SERVER) if shutil.which(name) is None]
        if missing:
            raise ServerMissing(
                f"{' and '.join(missing)} not found: install MariaDB (Debian: apt-get install "
                f"mariadb-server)"
            )
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.directory = Path(tempfile.mkdtemp(prefix="sa-mariadb-"))  # short: a socket lives here
        self.url = f"mysql+{driver}://root@127.0.0.1:{self.port}/"
        self._extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def start(self, timeout: float = 60) -> ThrowawayMariaDB:
        root = ["--user=root"] if os.geteuid() == 0 else []  # mariadbd refuses root otherwise
        if not self.data.exists():
            subprocess.run(
                [INSTALL, "--no-defaults", f"--datadir={self.data}", *root,
                 "--auth-root-authentication-method=normal", "--skip-test-db"],
                check=True, capture_output=True, timeout=timeout,
            )  # fmt: skip
        self.process = subprocess.Popen(
            [SERVER, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.directory / 's.sock'}",
             f"--pid-file={self.directory / 'pid'}", f"--log-error={self.directory / 'error.log'}",
             f"--log-bin={self.data / 'binlog'}", "--binlog-format=ROW", "--server-id=1",
             "--event-scheduler=ON", "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
             "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0", *root, *self._extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._accepts_connections():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "error.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"mariadbd did not start:\n{log}")
            time.sleep(0.05)  # waiting for start-up, not asserting timing
        return self

    def _accepts_connections(self) -> bool:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(("127.0.0.1", self.port))
            except OSError:
                return False
            # the server greets a client only once it is ready for queries
            try:
                return len(probe.recv(4)) == 4
            except OSError:
                return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ThrowawayMariaDB:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

"""The README's demo command: the walkthrough runs by itself, on the embedded defaults, and shows a
hit and a fresh read after the write."""

from __future__ import annotations

import os
import subprocess
import sys


def test_walkthrough_runs_and_shows_the_story() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "example_app.walkthrough"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "REDIS_URL is not set" in out
    assert "2. warm read" in out and "HIT" in out.split("2. warm read")[1].split("\n")[1]
    after_write = out.split("4. the read after the write")[1]
    assert "miss" in after_write.split("\n")[1] and "Ada Lovelace" in after_write
    assert "Ada Lovelace" in out.split("5. through the second instance")[1]
    assert len(out.splitlines()) < 40

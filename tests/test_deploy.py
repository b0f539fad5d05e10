"""Deployment files checked without a Docker engine: compose services, ports, volumes and
environment against the code; the Dockerfile's promises; .env.example against what is read."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.app.config import AppConfig

ROOT = Path(__file__).resolve().parents[1]


def env_example() -> dict[str, tuple[str, str]]:
    """KEY -> (value, the comment line above it)."""
    out: dict[str, tuple[str, str]] = {}
    comment = ""
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("#"):
            comment = line
        elif "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = (value.strip(), comment)
            comment = ""
    return out


def code_reads() -> set[str]:
    names = {f.alias for f in AppConfig.model_fields.values() if f.alias}
    for path in ROOT.glob("*/**/*.py"):
        if "tests" in path.parts or ".venv" in path.parts:
            continue
        names |= set(re.findall(r"""(?:environ(?:\.get)?\(?\[?|getenv\()\s*["']([A-Z][A-Z0-9_]+)["']""",
                                path.read_text()))
    return names


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def compose_reads() -> set[str]:
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "compose.yaml").read_text()))


def test_env_example_documents_exactly_what_is_read() -> None:
    documented = env_example()
    read = code_reads() | compose_reads()
    assert sorted(read - set(documented)) == [], "read but missing from .env.example"
    assert sorted(set(documented) - read) == [], "documented in .env.example but never read"
    for key, (_, comment) in documented.items():
        assert comment.startswith("# "), f"{key} has no one-line comment"


def test_env_example_fills_in_no_secret() -> None:
    for key, (value, _) in env_example().items():
        if any(word in key for word in ("TOKEN", "PASSWORD", "KEY", "SECRET", "USERID")):
            assert value == "", f"{key} must be left empty in .env.example"


def test_compose_services_ports_volumes() -> None:
    c = compose()
    services = c["services"]
    assert set(services) == {"bot", "ib-gateway"}
    gw, bot = services["ib-gateway"], services["bot"]
    assert "ports" not in gw and "ports" not in bot  # the IB API never leaves the compose network
    assert gw["environment"]["TRADING_MODE"].startswith("${TRADING_MODE:-paper}")
    assert bot["depends_on"]["ib-gateway"]["condition"] == "service_healthy"
    assert "healthcheck" in gw
    assert gw["restart"] == bot["restart"] == "unless-stopped"
    assert bot["env_file"] == ".env"
    assert bot["environment"]["IB_HOST"] == "ib-gateway"
    assert "bot-data:/data" in bot["volumes"] and "bot-data" in c["volumes"]
    assert bot["environment"]["DATA_DIR"] == "/data"


def test_dockerfile_promises() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim", text, re.M), "pin the base image by version"
    assert text.index("COPY pyproject.toml") < text.index("COPY bot"), "dependencies before the source"
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert 'HEALTHCHECK' in text and '"qqq-bot", "health"' in text
    assert 'CMD ["qqq-bot", "run"]' in text
    assert "DATA_DIR=/data" in text

"""`qqq-bot run` as a user runs it: a real process, polling a local Bot API server through
TELEGRAM_API_BASE_URL (the self-hosted option), answering /status, dropping the updates that
queued while it was down, stopping cleanly on SIGTERM, and never printing a secret."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from bot.app.totp import keygen

TOKEN = "424242:AAProcessTestTokenDoNotLeak_0123456789"
ADMIN = 4001
ROOT = Path(__file__).resolve().parents[1]


class BotApi(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.commands = ["/status"]
        self.drop_polls = 0  # the next N getUpdates calls lose their connection mid-poll
        self.served_update = False
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: BotApi

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode(errors="surrogateescape")
        ctype = self.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            from email.parser import BytesParser

            msg = BytesParser().parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body.encode(
                errors="surrogateescape"))
            params = {str(part.get_param("name", header="content-disposition")):
                      part.get_payload(decode=True).decode(errors="replace")
                      for part in msg.get_payload()  # type: ignore[union-attr]
                      if not part.get_param("filename", header="content-disposition")}
        else:
            params = json.loads(body or "{}") if "json" in ctype else dict(parse_qsl(body))
        method = self.path.rsplit("/", 1)[-1]
        if not self.path.startswith(f"/bot{TOKEN}/"):
            self._answer({"ok": False, "error_code": 401, "description": "Unauthorized"}, 401)
            return
        with self.server.lock:
            self.server.calls.append((method, params))
        result: Any = True
        if method == "getMe":
            result = {"id": 424242, "is_bot": True, "first_name": "bot", "username": "proc_bot"}
        elif method == "getUpdates":
            with self.server.lock:
                drop = self.server.drop_polls > 0
                self.server.drop_polls -= drop
            if drop:
                time.sleep(0.2)
                self.close_connection = True  # no answer at all: the network dropped
                self.connection.shutdown(2)
                return
            with self.server.lock:
                first = not self.server.served_update
                self.server.served_update = True
            if first:
                result = [{"update_id": 10 + i, "message": {
                    "message_id": 1 + i, "date": int(time.time()), "chat": {"id": ADMIN, "type": "private"},
                    "from": {"id": ADMIN, "is_bot": False, "first_name": "a"}, "text": cmd,
                    "entities": [{"type": "bot_command", "offset": 0, "length": len(cmd)}]}}
                    for i, cmd in enumerate(self.server.commands)]
            else:
                time.sleep(0.3)
                result = []
        elif method in ("sendMessage", "sendPhoto"):
            result = {"message_id": 99, "date": int(time.time()), "chat": {"id": int(params["chat_id"]),
                                                                           "type": "private"},
                      "text": params.get("text", "")}
        self._answer({"ok": True, "result": result})

    def _answer(self, payload: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def bot_api() -> Iterator[BotApi]:
    server = BotApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _env(tmp_path: Path, port: int, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "ADMIN_", "TOTP_", "BROKER"))}
    env.update({"TELEGRAM_BOT_TOKEN": TOKEN, "ADMIN_USER_IDS": str(ADMIN), "TOTP_ENCRYPTION_KEY": key,
                "DATA_DIR": str(tmp_path), "TELEGRAM_API_BASE_URL": f"http://127.0.0.1:{port}/bot",
                "LOG_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"})
    return env


def test_the_bot_process_answers_and_stops_cleanly(tmp_path: Path, bot_api: BotApi) -> None:
    key = keygen()
    bot_api.commands = ["/start", "/status"]  # enrollment first: its secret must not reach the log
    proc = subprocess.Popen([sys.executable, "-m", "handlers.app", "run"], cwd=ROOT,
                            env=_env(tmp_path, bot_api.server_address[1], key),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with bot_api.lock:
                if any(m == "sendMessage" and "Status" in p.get("text", "") for m, p in bot_api.calls):
                    break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    with bot_api.lock:
        calls = list(bot_api.calls)
    methods = [m for m, _ in calls]
    status = [p for m, p in calls if m == "sendMessage" and "Status" in p.get("text", "")]
    assert status and int(status[0]["chat_id"]) == ADMIN, (methods, out)
    assert "[SIM]" in status[0]["text"]
    assert "setMyCommands" in methods
    dropped = [p for m, p in calls if m == "deleteWebhook"]
    assert dropped and dropped[0].get("drop_pending_updates") in ("true", True)
    assert proc.returncode == 0, out
    assert "stopped cleanly" in out
    assert TOKEN not in out and TOKEN.split(":")[1] not in out and key not in out
    photo = [p for m, p in calls if m == "sendPhoto"]
    secret = re.search(r"secret=([A-Z2-7]+)", photo[0]["caption"]).group(1)  # type: ignore[union-attr]
    assert len(secret) >= 16 and secret not in out


def test_network_drops_during_long_polling_are_survived(tmp_path: Path, bot_api: BotApi) -> None:
    bot_api.drop_polls = 3
    proc = subprocess.Popen([sys.executable, "-m", "handlers.app", "run"], cwd=ROOT,
                            env=_env(tmp_path, bot_api.server_address[1], keygen()),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text = _wait_for_status(bot_api, proc, "Status", timeout=90)
        assert "Status" in text, "no answer after the network came back"
        assert bot_api.drop_polls <= 0
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "stopped cleanly" in out, out


def test_a_token_telegram_rejects_stops_with_one_line_and_never_prints_it(tmp_path: Path, bot_api: BotApi) -> None:
    wrong = "999999:AAWrongTokenForThisServer_0123456789"
    env = _env(tmp_path, bot_api.server_address[1], keygen())
    env["TELEGRAM_BOT_TOKEN"] = wrong  # the local Bot API answers 401 Unauthorized to it
    r = subprocess.run([sys.executable, "-m", "handlers.app", "run"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["qqq-bot: configuration error: TELEGRAM_BOT_TOKEN: rejected by Telegram"]
    assert wrong not in r.stdout + r.stderr and wrong.split(":")[1] not in r.stdout + r.stderr


def test_run_without_telegram_settings_says_which_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "ADMIN_", "TOTP_"))}
    env["DATA_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "handlers.app", "run"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "TELEGRAM_BOT_TOKEN" in r.stderr and "--headless" in r.stderr
    env.update({"TELEGRAM_BOT_TOKEN": TOKEN, "ADMIN_USER_IDS": "12,abc"})
    r = subprocess.run([sys.executable, "-m", "handlers.app", "run"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "ADMIN_USER_IDS" in r.stderr and "abc" in r.stderr
    assert TOKEN not in r.stderr + r.stdout
    env.update({"ADMIN_USER_IDS": "12", "TOTP_ENCRYPTION_KEY": "not-a-key"})
    r = subprocess.run([sys.executable, "-m", "handlers.app", "run"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "TOTP_ENCRYPTION_KEY" in r.stderr and "not-a-key" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _start_gateway(*extra: str) -> tuple[subprocess.Popen[str], int]:
    gw = subprocess.Popen([sys.executable, "-m", "tests.fake_gateway", "--port", "0", *extra], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert gw.stdout is not None
    line = gw.stdout.readline()
    m = re.search(r"127\.0\.0\.1:(\d+)", line)
    assert m, line
    return gw, int(m.group(1))


def _wait_for_status(bot_api: BotApi, proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> str:
    """Send /status (as a queued update) until a reply contains ``needle``; returns the last reply."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline and proc.poll() is None:
        with bot_api.lock:
            replies = [p.get("text", "") for m, p in bot_api.calls if m == "sendMessage" and "Status" in
                       p.get("text", "")]
            if replies:
                last = replies[-1]
                if needle in last:
                    return last
                bot_api.served_update = False  # ask again
        time.sleep(0.5)
    return last


@pytest.mark.parametrize("live", [False, True])
def test_broker_ib_runs_the_bot_against_the_fake_gateway(tmp_path: Path, bot_api: BotApi, live: bool) -> None:
    gw, port = _start_gateway(*(["--live-account"] if live else []))
    env = _env(tmp_path, bot_api.server_address[1], keygen())
    env.update({"BROKER": "ib", "IB_HOST": "127.0.0.1", "IB_PORT": str(port), "IB_CLIENT_ID": "7"})
    proc = subprocess.Popen([sys.executable, "-m", "handlers.app", "run"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text = _wait_for_status(bot_api, proc, "NOT TRADING" if live else "connected")
        assert proc.poll() is None
        if live:
            assert "LIVE account" in text and "ALLOW_LIVE_TRADING" in text
            assert "[PAPER]" not in text and "[SIM]" not in text
        else:
            assert "Broker: ib (paper)" in text and "[PAPER]" in text
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        for p in (proc, gw):
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert proc.returncode == 0, out
    assert "stopped cleanly" in out and TOKEN not in out


def test_backtest_source_ib_reads_bars_from_the_gateway(tmp_path: Path) -> None:
    from datetime import date, timedelta

    gw, port = _start_gateway()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IB_")}
    env.update({"IB_HOST": "127.0.0.1", "IB_PORT": str(port), "DATA_DIR": str(tmp_path)})
    end = date.today() - timedelta(days=1)
    start = end - timedelta(days=200)
    try:
        r = subprocess.run([sys.executable, "-m", "bot.app.cli", "backtest", "--source", "ib", "--start", str(start),
                            "--end", str(end), "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    finally:
        gw.kill()
        gw.communicate()
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["summary"]["sessions"] > 100
    assert result["summary"]["start"] >= str(start) and result["summary"]["end"] <= str(end)
    # the gateway is gone: one clear line, no traceback
    r = subprocess.run([sys.executable, "-m", "bot.app.cli", "backtest", "--source", "ib", "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot connect to IB Gateway" in r.stderr and "Traceback" not in r.stderr

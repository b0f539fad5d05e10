"""`qqq-bot health`: the running bot writes a heartbeat (time and broker state) every loop; the
health check, a separate process, reads it. Healthy = recent heartbeat, database opens, and in
`ib` mode the gateway connection is up."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from storage import kv

HEARTBEAT_KEY = "heartbeat"
MAX_AGE_S = 180


def write_heartbeat(now: datetime, broker_state: str) -> None:
    kv.put(HEARTBEAT_KEY, json.dumps({"time": now.isoformat(), "broker": broker_state}), now)


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    message: str


def check_heartbeat(now: datetime, broker: str, max_age_s: int = MAX_AGE_S) -> Health:
    """Judge the stored heartbeat (the database is already open)."""
    raw = kv.get(HEARTBEAT_KEY)
    if raw is None:
        return Health(False, "no heartbeat: the bot has not run its loop yet")
    try:
        beat = json.loads(raw)
        at = datetime.fromisoformat(beat["time"])
    except (ValueError, KeyError, TypeError):
        return Health(False, "heartbeat unreadable")
    age = (now - at).total_seconds()
    if age > max_age_s:
        return Health(False, f"heartbeat is {age:.0f} s old (limit {max_age_s} s): the bot's loop is stuck or stopped")
    if broker == "ib" and beat.get("broker") not in ("connected", "degraded"):  # degraded = up, delayed data
        return Health(False, f"IB Gateway connection is {beat.get('broker', 'unknown')}")
    return Health(True, f"ok: heartbeat {age:.0f} s ago, broker {beat.get('broker')}")

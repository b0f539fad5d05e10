"""Admin authentication: TOTP enrollment, one-time codes, lockout and sessions (on a real SQLite file)."""

from __future__ import annotations

import io
import sqlite3
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pyotp
import pytest
from cryptography.fernet import Fernet
from peewee import Database

from bot.app.totp import enroll_in_terminal, keygen
from storage import auth
from storage.auth import (
    LOCKOUT_FAILURES,
    Enrollment,
    InvalidKeyError,
    enrollment_status,
    has_session,
    load_fernet,
    login,
    logout,
    reset_enrollment,
    session_expires_at,
    start_enrollment,
)
from storage.db import close_database, open_database
from storage.models import Admin, LoginAttempt

USER = 424242
T0 = datetime(2025, 3, 3, 15, 0, 5, tzinfo=UTC)  # 5 s into a 30 s step
TTL = timedelta(minutes=30)
STEP = timedelta(seconds=30)


@pytest.fixture
def fernet() -> Fernet:
    return Fernet(Fernet.generate_key())


def code_at(secret: str, at: datetime) -> str:
    return pyotp.TOTP(secret).at(at)


def wrong_code(secret: str, at: datetime) -> str:
    """A well-formed code that matches none of the accepted steps around ``at``."""
    totp = pyotp.TOTP(secret)
    valid = {totp.at(at, counter_offset=o) for o in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in valid)


def enroll(fernet: Fernet, now: datetime = T0, user_id: int = USER) -> Enrollment:
    e = start_enrollment(user_id, fernet, now)
    assert e is not None
    return e


def enroll_active(fernet: Fernet, now: datetime = T0) -> tuple[str, datetime]:
    """Enroll and activate; returns the secret and a time one step later (a fresh code)."""
    e = enroll(fernet, now)
    assert login(USER, code_at(e.secret, now), fernet, now, TTL).ok
    return e.secret, now + STEP


# --- enrollment ----------------------------------------------------------------------------------


def test_enrollment_gives_png_qr_and_uri_with_issuer_and_user(db: Database, fernet: Fernet) -> None:
    e = enroll(fernet)
    assert e.png.startswith(b"\x89PNG\r\n\x1a\n")
    parsed = urlparse(e.uri)
    assert parsed.scheme == "otpauth" and parsed.netloc == "totp"
    assert "QQQ LEAPS bot" in unquote(parsed.path) and str(USER) in unquote(parsed.path)
    query = parse_qs(parsed.query)
    assert query["secret"] == [e.secret] and query["issuer"] == ["QQQ LEAPS bot"]
    assert len(e.secret) == 32  # 160 bits of base32
    assert e.secret not in repr(e)
    assert enrollment_status(USER) == "pending"


def test_custom_issuer(db: Database, fernet: Fernet) -> None:
    e = start_enrollment(USER, fernet, T0, issuer="Paper bot")
    assert e is not None and "issuer=Paper%20bot" in e.uri


def test_database_never_holds_the_plaintext_secret(db: Database, fernet: Fernet, tmp_path: Path) -> None:
    e = enroll(fernet)
    assert login(USER, code_at(e.secret, T0), fernet, T0, TTL).ok
    stored: str | None = Admin.get(Admin.user_id == USER).totp_secret_enc
    assert stored is not None and e.secret not in stored
    assert fernet.decrypt(stored.encode()).decode() == e.secret
    for f in tmp_path.glob("bot.db*"):  # the database file and its WAL
        assert e.secret.encode() not in f.read_bytes(), f.name
    with sqlite3.connect(tmp_path / "bot.db") as raw:
        dump = "\n".join(raw.iterdump())
    assert e.secret not in dump


def test_start_enrollment_returns_none_when_active(db: Database, fernet: Fernet) -> None:
    secret, later = enroll_active(fernet)
    assert start_enrollment(USER, fernet, later) is None
    assert enrollment_status(USER) == "active"
    # the active secret still works
    assert login(USER, code_at(secret, later), fernet, later, TTL).ok


def test_restarting_a_pending_enrollment_replaces_the_secret(db: Database, fernet: Fernet) -> None:
    first = enroll(fernet)
    second = enroll(fernet, T0 + STEP)
    assert first.secret != second.secret
    at = T0 + 2 * STEP
    assert not login(USER, code_at(first.secret, at), fernet, at, TTL).ok
    result = login(USER, code_at(second.secret, at), fernet, at, TTL)
    assert result.ok and result.activated


def test_reset_enrollment_allows_enrolling_again(db: Database, fernet: Fernet) -> None:
    old, later = enroll_active(fernet)
    reset_enrollment(USER)
    assert enrollment_status(USER) == "none"
    assert not has_session(USER, later)
    assert login(USER, code_at(old, later), fernet, later, TTL).message == auth.NOT_ENROLLED
    new = enroll(fernet, later)
    assert login(USER, code_at(new.secret, later), fernet, later, TTL).activated


# --- login ---------------------------------------------------------------------------------------


def test_first_valid_code_activates_and_opens_a_session(db: Database, fernet: Fernet) -> None:
    e = enroll(fernet)
    assert not has_session(USER, T0)
    result = login(USER, code_at(e.secret, T0), fernet, T0, TTL)
    assert result.ok and result.activated and not result.newly_locked
    assert enrollment_status(USER) == "active"
    assert has_session(USER, T0)
    assert session_expires_at(USER) == T0 + TTL
    row = Admin.get(Admin.user_id == USER)
    assert row.enrolled_at == T0
    # later logins do not "activate" again
    later = T0 + STEP
    again = login(USER, code_at(e.secret, later), fernet, later, TTL)
    assert again.ok and not again.activated


def test_codes_one_step_either_side_are_accepted(db: Database, fernet: Fernet) -> None:
    e = enroll(fernet)
    assert login(USER, code_at(e.secret, T0 - STEP), fernet, T0, TTL).ok
    at = T0 + 10 * STEP
    assert login(USER, code_at(e.secret, at + STEP), fernet, at, TTL).ok
    at2 = T0 + 20 * STEP
    assert not login(USER, code_at(e.secret, at2 + 2 * STEP), fernet, at2, TTL).ok


def test_not_enrolled(db: Database, fernet: Fernet) -> None:
    result = login(USER, "123456", fernet, T0, TTL)
    assert not result.ok and result.message == "Not enrolled: send /start in a private chat first."
    assert enrollment_status(USER) == "none"


def test_wrong_code_refused(db: Database, fernet: Fernet) -> None:
    e = enroll(fernet)
    result = login(USER, wrong_code(e.secret, T0), fernet, T0, TTL)
    assert not result.ok and not result.activated
    assert "Wrong code" in result.message
    assert enrollment_status(USER) == "pending" and not has_session(USER, T0)
    assert [a.ok for a in LoginAttempt.select()] == [False]


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "abcdef", "12 34 5", "١٢٣٤٥٦"])
def test_malformed_code_refused_and_counted(db: Database, fernet: Fernet, bad: str) -> None:
    enroll(fernet)
    result = login(USER, bad, fernet, T0, TTL)
    assert not result.ok and "6 digits" in result.message
    assert LoginAttempt.select().where(LoginAttempt.ok == False).count() == 1  # noqa: E712


def test_code_with_spaces_is_accepted(db: Database, fernet: Fernet) -> None:
    e = enroll(fernet)
    c = code_at(e.secret, T0)
    assert login(USER, f" {c[:3]} {c[3:]} ", fernet, T0, TTL).ok


def test_replayed_code_refused_within_its_window(db: Database, fernet: Fernet) -> None:
    e = enroll(fernet)
    c = code_at(e.secret, T0)
    assert login(USER, c, fernet, T0, TTL).ok
    logout(USER)
    again = login(USER, c, fernet, T0 + timedelta(seconds=10), TTL)  # same step, still "valid"
    assert not again.ok
    assert again.message.startswith("That code was already used; wait for the next one.")
    assert not has_session(USER, T0 + timedelta(seconds=10))
    # also refused when presented in the next step (valid_window=1 would otherwise accept it)
    assert not login(USER, c, fernet, T0 + STEP, TTL).ok


def test_older_code_after_newer_refused(db: Database, fernet: Fernet) -> None:
    e = enroll(fernet)
    newer = code_at(e.secret, T0 + STEP)
    older = code_at(e.secret, T0)
    assert login(USER, newer, fernet, T0, TTL).ok  # next step's code (clock drift)
    result = login(USER, older, fernet, T0, TTL)
    assert not result.ok and "already used" in result.message


def test_undecryptable_secret_is_refused_without_counting(db: Database, fernet: Fernet) -> None:
    e = enroll(fernet)
    other = Fernet(Fernet.generate_key())
    result = login(USER, code_at(e.secret, T0), other, T0, TTL)
    assert not result.ok and "key" in result.message
    assert LoginAttempt.select().count() == 0


# --- lockout -------------------------------------------------------------------------------------


def test_five_failures_in_fifteen_minutes_lock_out(db: Database, fernet: Fernet) -> None:
    secret, start = enroll_active(fernet)
    logout(USER)
    results = [login(USER, wrong_code(secret, start), fernet, start + i * timedelta(minutes=3), TTL)
               for i in range(LOCKOUT_FAILURES)]
    assert [r.newly_locked for r in results] == [False] * (LOCKOUT_FAILURES - 1) + [True]
    locked_at = start + (LOCKOUT_FAILURES - 1) * timedelta(minutes=3)
    assert results[-1].locked_until == locked_at + timedelta(minutes=15)

    # a correct code is refused while locked, with the time, and is not counted
    during = locked_at + timedelta(minutes=14, seconds=59)
    attempts = LoginAttempt.select().count()
    refused = login(USER, code_at(secret, during), fernet, during, TTL)
    assert not refused.ok and not refused.newly_locked
    assert refused.locked_until == locked_at + timedelta(minutes=15)
    assert (locked_at + timedelta(minutes=15)).strftime("%H:%M") in refused.message
    assert LoginAttempt.select().count() == attempts
    assert not has_session(USER, during)

    # a correct code is accepted once the 15 minutes are over
    after = locked_at + timedelta(minutes=15)
    assert login(USER, code_at(secret, after), fernet, after, TTL).ok
    assert has_session(USER, after)


def test_after_a_lockout_ends_the_count_starts_again(db: Database, fernet: Fernet) -> None:
    secret, start = enroll_active(fernet)
    for i in range(LOCKOUT_FAILURES):
        login(USER, "000000" if i % 2 else "bad", fernet, start + i * timedelta(seconds=1), TTL)
    after = start + timedelta(minutes=15, seconds=10)
    result = login(USER, wrong_code(secret, after), fernet, after, TTL)
    assert not result.ok and not result.newly_locked and result.locked_until is None


def test_failures_spread_over_more_than_fifteen_minutes_do_not_lock(db: Database, fernet: Fernet) -> None:
    secret, start = enroll_active(fernet)
    for i in range(3 * LOCKOUT_FAILURES):
        at = start + i * timedelta(minutes=4)  # never five within 15 minutes
        result = login(USER, wrong_code(secret, at), fernet, at, TTL)
        assert not result.ok and not result.newly_locked and result.locked_until is None
    at = start + 3 * LOCKOUT_FAILURES * timedelta(minutes=4)
    assert login(USER, code_at(secret, at), fernet, at, TTL).ok


def test_a_success_resets_the_failure_count(db: Database, fernet: Fernet) -> None:
    secret, start = enroll_active(fernet)
    for i in range(LOCKOUT_FAILURES - 1):
        assert not login(USER, wrong_code(secret, start), fernet, start + i * timedelta(seconds=1), TTL).newly_locked
    ok_at = start + STEP
    assert login(USER, code_at(secret, ok_at), fernet, ok_at, TTL).ok
    result = login(USER, wrong_code(secret, ok_at), fernet, ok_at + timedelta(seconds=1), TTL)
    assert not result.newly_locked


def test_replays_count_as_failures(db: Database, fernet: Fernet) -> None:
    secret, start = enroll_active(fernet)
    c = code_at(secret, start)
    assert login(USER, c, fernet, start, TTL).ok
    results = [login(USER, c, fernet, start + timedelta(seconds=i + 1), TTL) for i in range(LOCKOUT_FAILURES)]
    assert results[-1].newly_locked


def test_lockout_survives_reopening_the_database(db: Database, fernet: Fernet, tmp_path: Path) -> None:
    secret, start = enroll_active(fernet)
    for i in range(LOCKOUT_FAILURES):
        last = login(USER, wrong_code(secret, start), fernet, start + i * timedelta(seconds=1), TTL)
    assert last.newly_locked
    close_database(db)
    reopened = open_database(f"sqlite:///{tmp_path / 'bot.db'}")
    try:
        at = start + timedelta(minutes=5)
        result = login(USER, code_at(secret, at), fernet, at, TTL)
        assert not result.ok and result.locked_until == last.locked_until
    finally:
        close_database(reopened)


# --- sessions ------------------------------------------------------------------------------------


def test_session_expires_after_ttl(db: Database, fernet: Fernet) -> None:
    enroll_active(fernet)
    assert has_session(USER, T0 + TTL - timedelta(microseconds=1))
    assert not has_session(USER, T0 + TTL)
    assert session_expires_at(USER) == T0 + TTL


def test_logout_ends_the_session(db: Database, fernet: Fernet) -> None:
    _, later = enroll_active(fernet)
    assert logout(USER) is True
    assert not has_session(USER, later)
    assert session_expires_at(USER) is None
    assert logout(USER) is False
    assert logout(999) is False


def test_logout_of_an_expired_session_with_now(db: Database, fernet: Fernet) -> None:
    enroll_active(fernet)
    assert logout(USER, T0 + TTL + STEP) is False
    assert session_expires_at(USER) is None


def test_pending_secret_gives_no_session(db: Database, fernet: Fernet) -> None:
    enroll(fernet)
    assert not has_session(USER, T0) and session_expires_at(USER) is None


# --- the key -------------------------------------------------------------------------------------


BAD_KEYS = ["", "   ", "not-a-key", "c2hvcnQ=", "x" * 44, "é" * 44, Fernet.generate_key().decode()[:-4]]


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_malformed_key_gives_a_clear_error_without_the_key(bad: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        load_fernet(bad)
    message = str(info.value)
    assert message == ("TOTP_ENCRYPTION_KEY must be a urlsafe-base64 32-byte key (qqq-bot totp keygen prints one)")
    shown = "".join(traceback.format_exception(info.value))  # what a crash would print, chained errors included
    if bad.strip():
        assert bad.strip() not in shown
    assert "During handling" not in shown and "direct cause" not in shown
    assert isinstance(info.value, ValueError)


def test_key_with_surrounding_whitespace_loads() -> None:
    key = Fernet.generate_key().decode()
    assert load_fernet(f" {key}\n").decrypt(Fernet(key).encrypt(b"x")) == b"x"


# --- shell helpers -------------------------------------------------------------------------------


def test_keygen_output_loads() -> None:
    key = keygen()
    assert isinstance(key, str) and len(key) == 44
    f = load_fernet(key)
    assert f.decrypt(f.encrypt(b"ok")) == b"ok"
    assert keygen() != key


def test_enroll_in_terminal_prints_uri_and_qr(db: Database) -> None:
    key = keygen()
    out = io.StringIO()
    enroll_in_terminal(USER, key, out, now=T0)
    text = out.getvalue()
    uri_lines = [line for line in text.splitlines() if line.startswith("otpauth://totp/")]
    assert len(uri_lines) == 1
    secret = parse_qs(urlparse(uri_lines[0]).query)["secret"][0]
    qr_lines = [line for line in text.splitlines() if any(ch in line for ch in "█▀▄")]
    assert len(qr_lines) > 10
    assert enrollment_status(USER) == "pending"
    # finished like the phone flow: the first valid /login activates it
    result = login(USER, code_at(secret, T0), load_fernet(key), T0, TTL)
    assert result.ok and result.activated

    again = io.StringIO()
    enroll_in_terminal(USER, key, again, now=T0)
    assert "already has an active" in again.getvalue() and "otpauth://" not in again.getvalue()


def test_enroll_in_terminal_rejects_a_bad_key(db: Database) -> None:
    with pytest.raises(InvalidKeyError):
        enroll_in_terminal(USER, "nope", io.StringIO(), now=T0)
    assert enrollment_status(USER) == "none"

"""Admin authentication on the database: TOTP enrollment, `/login` with replay protection and
lockout, and sessions.

Pure functions over peewee, pyotp and Fernet; no Telegram here. The caller passes ``now`` (an aware
UTC datetime) everywhere; nothing in this module reads the clock. The TOTP secret is stored only
encrypted (``Admin.totp_secret_enc``); the secret, the codes and the key are never logged nor put in
an exception message.
"""

from __future__ import annotations

import hmac
import io
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pyotp
import qrcode
from cryptography.fernet import Fernet, InvalidToken

from storage.models import Admin, LoginAttempt, database_proxy

log = logging.getLogger(__name__)

LOCKOUT_FAILURES = 5
LOCKOUT_WINDOW = timedelta(minutes=15)
LOCKOUT_FOR = timedelta(minutes=15)
VALID_WINDOW = 1  # accept the previous, current and next 30-second code (clock drift)

_CODE = re.compile(r"[0-9]{6}")
_KEY_MESSAGE = "TOTP_ENCRYPTION_KEY must be a urlsafe-base64 32-byte key (qqq-bot totp keygen prints one)"
NOT_ENROLLED = "Not enrolled: send /start in a private chat first."
REPLAYED = "That code was already used; wait for the next one."


class InvalidKeyError(ValueError):
    """A malformed TOTP_ENCRYPTION_KEY. The message never contains the key."""


def load_fernet(key: str) -> Fernet:
    """The Fernet for ``key`` (surrounding whitespace ignored), or InvalidKeyError."""
    if not isinstance(key, str | bytes):
        raise InvalidKeyError(_KEY_MESSAGE)
    text = key.strip()
    if not text:
        raise InvalidKeyError(_KEY_MESSAGE)
    try:
        return Fernet(text)
    except (ValueError, TypeError):  # binascii.Error is a ValueError; no chaining: it may quote the input
        raise InvalidKeyError(_KEY_MESSAGE) from None


# --- enrollment ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrollment:
    user_id: int
    secret: str
    uri: str
    png: bytes

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"Enrollment(user_id={self.user_id}, secret=<hidden>, uri=<hidden>, png=<{len(self.png)} bytes>)"


def _image_factory() -> Any:
    """qrcode's pure-Python PNG writer when pypng is installed, else its Pillow image."""
    try:
        import png  # noqa: F401  (pypng)
        from qrcode.image.pure import PyPNGImage

        return PyPNGImage
    except ImportError:
        from qrcode.image.pil import PilImage  # needs Pillow (the qrcode[pil] extra)

        return PilImage


def qr_png(data: str) -> bytes:
    """A PNG of the QR code for ``data``."""
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=8, border=4)
    qr.add_data(data)
    qr.make(fit=True)
    image = qr.make_image(image_factory=_image_factory())
    buf = io.BytesIO()
    image.save(buf)
    return buf.getvalue()


def provisioning_uri(secret: str, user_id: int, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=str(user_id), issuer_name=issuer)


def enrollment_status(user_id: int) -> Literal["none", "pending", "active"]:
    admin = Admin.get_or_none(Admin.user_id == user_id)
    if admin is None or admin.totp_secret_enc is None:
        return "none"
    return "active" if admin.totp_active else "pending"


def start_enrollment(user_id: int, fernet: Fernet, now: datetime, issuer: str = "QQQ LEAPS bot") -> Enrollment | None:
    """Create (or replace) a pending secret for ``user_id``; None when an active secret exists.

    The secret becomes active with the first valid ``login``. Whether ``user_id`` may be an admin at
    all is the caller's check."""
    secret = pyotp.random_base32()
    token = fernet.encrypt_at_time(secret.encode("ascii"), int(now.timestamp())).decode("ascii")
    with database_proxy.atomic():
        admin = Admin.get_or_none(Admin.user_id == user_id)
        if admin is not None and admin.totp_secret_enc is not None and admin.totp_active:
            return None
        if admin is None:
            Admin.create(user_id=user_id, totp_secret_enc=token, totp_active=False, last_timecode=0)
        else:
            # A new secret: replay protection starts afresh; no session survives re-enrollment.
            Admin.update(totp_secret_enc=token, totp_active=False, last_timecode=0, session_expires_at=None,
                         enrolled_at=None).where(Admin.user_id == user_id).execute()
    log.info("TOTP enrollment started (pending) for admin %s", user_id)
    uri = provisioning_uri(secret, user_id, issuer)
    return Enrollment(user_id=user_id, secret=secret, uri=uri, png=qr_png(uri))


def reset_enrollment(user_id: int) -> None:
    """Drop the admin's secret (and session) so they can enroll again. A lockout stays in force."""
    with database_proxy.atomic():
        Admin.update(totp_secret_enc=None, totp_active=False, last_timecode=0, session_expires_at=None,
                     enrolled_at=None).where(Admin.user_id == user_id).execute()
    log.info("TOTP enrollment reset for admin %s", user_id)


# --- login -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    message: str  # user-facing, plain text
    activated: bool = False
    locked_until: datetime | None = None
    newly_locked: bool = False


def _hhmm(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%H:%M UTC")


def _locked_message(until: datetime) -> str:
    return f"Too many wrong codes: logins are locked until {_hhmm(until)}."


def _matching_timecode(secret: str, code: str, now: datetime) -> int | None:
    """The timecode whose OTP equals ``code`` within ±VALID_WINDOW steps of ``now``, else None."""
    totp = pyotp.TOTP(secret)
    base = totp.timecode(now)
    found: int | None = None
    for offset in range(-VALID_WINDOW, VALID_WINDOW + 1):
        # compare every candidate in constant time; keep the latest match
        if hmac.compare_digest(totp.at(now, counter_offset=offset), code):
            found = base + offset
    return found


def _record(user_id: int, now: datetime, ok: bool) -> None:
    LoginAttempt.create(user_id=user_id, at=now, ok=ok)


def _recent_failures(admin: Admin, now: datetime) -> int:
    """Failures inside the window, since the last success and since the end of the last lockout."""
    last_ok = (LoginAttempt.select(LoginAttempt.at)
               .where((LoginAttempt.user_id == admin.user_id) & (LoginAttempt.ok == True))  # noqa: E712
               .order_by(LoginAttempt.at.desc()).first())
    query = LoginAttempt.select().where((LoginAttempt.user_id == admin.user_id) & (LoginAttempt.ok == False)  # noqa: E712
                                        & (LoginAttempt.at > now - LOCKOUT_WINDOW))
    if last_ok is not None:
        query = query.where(LoginAttempt.at > last_ok.at)
    if admin.locked_until is not None:
        query = query.where(LoginAttempt.at >= admin.locked_until)
    return int(query.count())


def _fail(admin: Admin, now: datetime, message: str) -> LoginResult:
    """Record a failed attempt; lock the admin out on the LOCKOUT_FAILURES-th failure in the window.
    Called inside a transaction."""
    _record(admin.user_id, now, ok=False)
    failures = _recent_failures(admin, now)
    if failures >= LOCKOUT_FAILURES:
        until = now + LOCKOUT_FOR
        Admin.update(locked_until=until, session_expires_at=None).where(Admin.user_id == admin.user_id).execute()
        log.warning("admin %s locked out until %s after %d failed codes", admin.user_id, until.isoformat(), failures)
        return LoginResult(ok=False, message=f"{message} {_locked_message(until)}", locked_until=until,
                           newly_locked=True)
    left = LOCKOUT_FAILURES - failures
    log.info("failed login for admin %s (%d of %d)", admin.user_id, failures, LOCKOUT_FAILURES)
    return LoginResult(ok=False, message=f"{message} {left} attempt{'s' if left != 1 else ''} left before a lockout.")


def login(user_id: int, code: str, fernet: Fernet, now: datetime, session_ttl: timedelta) -> LoginResult:
    """Check a `/login CODE`; on success open a session (and activate a pending secret).

    A code is accepted once: the admin's ``last_timecode`` only moves forward, by a conditional UPDATE
    that succeeds for exactly one caller. Every attempt on an enrolled, unlocked admin is recorded."""
    with database_proxy.atomic():
        admin = Admin.get_or_none(Admin.user_id == user_id)
        if admin is None or admin.totp_secret_enc is None:
            return LoginResult(ok=False, message=NOT_ENROLLED)
        if admin.locked_until is not None and admin.locked_until > now:
            return LoginResult(ok=False, message=_locked_message(admin.locked_until), locked_until=admin.locked_until)

        try:
            secret = fernet.decrypt(admin.totp_secret_enc.encode("ascii")).decode("ascii")
        except (InvalidToken, ValueError):
            log.error("the TOTP secret of admin %s cannot be decrypted: was TOTP_ENCRYPTION_KEY changed?", user_id)
            return LoginResult(ok=False, message="Login is unavailable: the stored secret cannot be read with the "
                                                 "configured key. The operator must fix the key or reset enrollment.")

        normalized = "".join(str(code).split())
        if not _CODE.fullmatch(normalized):
            return _fail(admin, now, "A code is 6 digits.")
        timecode = _matching_timecode(secret, normalized, now)
        if timecode is None:
            return _fail(admin, now, "Wrong code.")
        changed = (Admin.update(last_timecode=timecode)
                   .where((Admin.user_id == user_id) & (Admin.last_timecode < timecode)).execute())
        if changed != 1:
            log.warning("replayed TOTP code refused for admin %s", user_id)
            return _fail(admin, now, REPLAYED)

        activated = not admin.totp_active
        expires = now + session_ttl
        updates: dict[Any, Any] = {Admin.session_expires_at: expires, Admin.locked_until: None}
        if activated:
            updates.update({Admin.totp_active: True, Admin.enrolled_at: now})
        Admin.update(updates).where(Admin.user_id == user_id).execute()
        _record(user_id, now, ok=True)
    log.info("admin %s logged in%s; session until %s", user_id, " (TOTP activated)" if activated else "",
             expires.isoformat())
    prefix = "Two-factor login is set up. " if activated else ""
    minutes = int(session_ttl.total_seconds() // 60)
    return LoginResult(ok=True, message=f"{prefix}Logged in for {minutes} min (until {_hhmm(expires)}).",
                       activated=activated)


# --- sessions -----------------------------------------------------------------------------------


def has_session(user_id: int, now: datetime) -> bool:
    admin = Admin.get_or_none(Admin.user_id == user_id)
    return bool(admin is not None and admin.totp_secret_enc is not None and admin.totp_active
                and admin.session_expires_at is not None and admin.session_expires_at > now)


def session_expires_at(user_id: int) -> datetime | None:
    """When the admin's session ends (possibly already past), or None without one."""
    admin = Admin.get_or_none(Admin.user_id == user_id)
    if admin is None or not admin.totp_active:
        return None
    expires: datetime | None = admin.session_expires_at
    return expires


def logout(user_id: int, now: datetime | None = None) -> bool:
    """End the admin's session. True if there was one (with ``now``: one that had not yet expired)."""
    with database_proxy.atomic():
        admin = Admin.get_or_none(Admin.user_id == user_id)
        if admin is None or admin.session_expires_at is None:
            return False
        was_open = now is None or admin.session_expires_at > now
        Admin.update(session_expires_at=None).where(Admin.user_id == user_id).execute()
    if was_open:
        log.info("admin %s logged out", user_id)
    return was_open


__all__ = [
    "LOCKOUT_FAILURES",
    "LOCKOUT_FOR",
    "LOCKOUT_WINDOW",
    "NOT_ENROLLED",
    "REPLAYED",
    "Enrollment",
    "InvalidKeyError",
    "LoginResult",
    "enrollment_status",
    "has_session",
    "load_fernet",
    "login",
    "logout",
    "qr_png",
    "reset_enrollment",
    "session_expires_at",
    "start_enrollment",
]

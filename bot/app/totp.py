"""Shell helpers for TOTP: make an encryption key, and enroll an admin from a terminal.

The database must already be open (the CLI opens it). Enrollment from the shell is finished the
same way as from the phone: the first valid ``/login CODE`` in Telegram activates the secret.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TextIO

import qrcode
from cryptography.fernet import Fernet

from storage.auth import load_fernet, start_enrollment


def keygen() -> str:
    """A new TOTP_ENCRYPTION_KEY: urlsafe base64 of 32 random bytes."""
    return Fernet.generate_key().decode("ascii")


def enroll_in_terminal(user_id: int, key: str, out: TextIO, now: datetime | None = None) -> None:
    """Start an enrollment for ``user_id`` and print its otpauth URI and QR code to ``out``.

    Raises InvalidKeyError for a malformed key. When the admin already has an active secret nothing
    changes and ``out`` says so (reset the enrollment first to replace it)."""
    fernet = load_fernet(key)
    enrollment = start_enrollment(user_id, fernet, now or datetime.now(UTC))
    if enrollment is None:
        out.write(f"User {user_id} already has an active TOTP secret; reset the enrollment first to replace it.\n")
        return
    qr = qrcode.QRCode(border=2)
    qr.add_data(enrollment.uri)
    qr.make(fit=True)
    out.write(f"Scan this QR code with an authenticator app for Telegram user {user_id}:\n\n")
    qr.print_ascii(out=out, invert=True)
    out.write(f"\nOr add this URI by hand (it contains the secret; keep it private):\n{enrollment.uri}\n\n")
    out.write("Then send /login CODE to the bot in Telegram to activate it.\n")
    out.flush()

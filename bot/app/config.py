"""Process configuration from the environment (pydantic-settings). Hard limits live here, out of
reach of chat commands. A missing or malformed variable stops start-up with one clear line."""

from __future__ import annotations

from datetime import time
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from strategy.rules import DailyLimits


def parse_window(text: str) -> tuple[time, time] | None:
    """'HH:MM-HH:MM' → (start, end); '' → None. Raises ValueError with a clear message."""
    if not text.strip():
        return None
    try:
        a, b = (time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"'{text}' is not a window like 23:45-00:15") from None
    return a, b


class AppConfig(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    broker: Literal["sim", "ib"] = Field("sim", alias="BROKER")
    data_dir: Path = Field(Path("./data"), alias="DATA_DIR")
    database_url: str | None = Field(None, alias="DATABASE_URL")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="LOG_LEVEL")
    log_format: Literal["text", "json"] = Field("text", alias="LOG_FORMAT")
    backup_keep_days: int = Field(14, ge=1, le=3650, alias="BACKUP_KEEP_DAYS")
    max_orders_per_day: int = Field(10, ge=1, le=1000, alias="MAX_ORDERS_PER_DAY")
    max_premium_per_day: Decimal = Field(Decimal(25000), ge=0, le=Decimal(10_000_000), alias="MAX_PREMIUM_PER_DAY")
    sim_seed: int = Field(7, alias="SIM_SEED")
    sim_capital: Decimal = Field(Decimal(100_000), gt=0, alias="SIM_CAPITAL")
    sim_cash_rate: str = Field("0", alias="SIM_CASH_RATE")
    sim_pricing: str = Field("", alias="SIM_PRICING")
    backtest_csv: str | None = Field(None, alias="BACKTEST_CSV")
    backtest_iv: str | None = Field(None, alias="BACKTEST_IV")
    backtest_cash_rate: str = Field("0", alias="BACKTEST_CASH_RATE")
    # Telegram control plane
    telegram_bot_token: SecretStr | None = Field(None, alias="TELEGRAM_BOT_TOKEN")
    admin_user_ids_text: str = Field("", alias="ADMIN_USER_IDS")
    totp_encryption_key: SecretStr | None = Field(None, alias="TOTP_ENCRYPTION_KEY")
    session_ttl_min: int = Field(30, ge=1, le=1440, alias="SESSION_TTL_MIN")
    telegram_api_base_url: str = Field("https://api.telegram.org/bot", alias="TELEGRAM_API_BASE_URL")
    # Interactive Brokers
    ib_host: str = Field("127.0.0.1", alias="IB_HOST")
    ib_port: int = Field(4004, ge=1, le=65535, alias="IB_PORT")
    ib_client_id: int = Field(1, ge=0, le=2**31 - 1, alias="IB_CLIENT_ID")
    allow_live_trading: bool = Field(False, alias="ALLOW_LIVE_TRADING")
    ib_quiet_window: str = Field("23:45-00:30", alias="IB_QUIET_WINDOW")

    @field_validator("sim_cash_rate", "backtest_cash_rate")
    @classmethod
    def _cash_rate(cls, v: str) -> str:
        from bot.lab.rates import RateError, parse_cash_rate

        try:
            parse_cash_rate(v)
        except RateError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("sim_pricing")
    @classmethod
    def _pricing(cls, v: str) -> str:
        from bot.lab.pricing import PricingError, load_pricing

        try:
            load_pricing(v)
        except PricingError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("database_url")
    @classmethod
    def _sqlite_only(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.startswith("sqlite:///") or v == "sqlite:///":
            raise ValueError("only SQLite is supported: sqlite:///PATH (or leave it empty for DATA_DIR/bot.db)")
        return v

    @field_validator("ib_quiet_window")
    @classmethod
    def _quiet(cls, v: str) -> str:
        parse_window(v)
        return v

    @field_validator("admin_user_ids_text")
    @classmethod
    def _user_ids(cls, v: str) -> str:
        for part in v.replace(" ", "").split(","):
            if part and not (part.isascii() and part.isdigit()):  # '²'.isdigit() is True, int('²') fails
                raise ValueError(f"'{part}' is not a Telegram user id (comma-separated positive numbers)")
        return v

    @field_validator("telegram_bot_token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None
        bot_id, _, rest = v.get_secret_value().partition(":")
        if not (bot_id.isascii() and bot_id.isdigit()) or len(rest) < 20:
            raise ValueError("does not look like a BotFather token (123456:ABC...)")
        return v

    @field_validator("totp_encryption_key")
    @classmethod
    def _fernet_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None
        import base64
        import binascii

        try:
            raw = base64.urlsafe_b64decode(v.get_secret_value().encode())
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError("must be a urlsafe-base64 32-byte key (`qqq-bot totp keygen` prints one)")
        return v

    @field_validator("telegram_api_base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL such as https://api.telegram.org/bot")
        return v

    @property
    def admin_user_ids(self) -> frozenset[int]:
        return frozenset(int(p) for p in self.admin_user_ids_text.replace(" ", "").split(",") if p)

    def telegram_problem(self) -> str | None:
        """The first missing piece the Telegram bot needs, as one line naming the variable."""
        if self.telegram_bot_token is None:
            return "TELEGRAM_BOT_TOKEN: missing (the token BotFather gave you); or run `qqq-bot run --headless`"
        if not self.admin_user_ids:
            return "ADMIN_USER_IDS: missing (your numeric Telegram user id, comma-separated for several)"
        if self.totp_encryption_key is None:
            return "TOTP_ENCRYPTION_KEY: missing (`qqq-bot totp keygen` prints one)"
        return None

    def secrets(self) -> list[str]:
        """Values that must never reach a log line."""
        return [s.get_secret_value() for s in (self.telegram_bot_token, self.totp_encryption_key) if s is not None]

    @property
    def db_url(self) -> str:
        from storage.db import database_url_for

        return self.database_url or database_url_for(self.data_dir)

    @property
    def limits(self) -> DailyLimits:
        return DailyLimits(self.max_orders_per_day, self.max_premium_per_day)


class ConfigError(Exception):
    """A configuration problem, phrased as one line naming the variable."""


def load_config() -> AppConfig:
    try:
        return AppConfig()
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else "configuration"
        raise ConfigError(f"{name}: {str(err['msg']).removeprefix('Value error, ')}") from None

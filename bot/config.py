"""Process configuration from the environment (pydantic-settings). Hard limits live here, out of
reach of chat commands. A missing or malformed variable stops start-up with one clear line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from strategy.rules import DailyLimits


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
        raise ConfigError(f"{name}: {err['msg']}") from None

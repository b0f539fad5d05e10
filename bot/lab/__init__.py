"""Backtests, their reports and charts, chat backtests, sweeps and their backends."""

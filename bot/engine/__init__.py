"""The engine: ticks, the order lifecycle, reconciliation, the decision journal, settings, alerts."""

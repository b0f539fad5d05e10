"""The services chat commands call: status, positions, manual actions, period reports, the broker cache."""

"""The running bot's shell: CLI, configuration, the headless runner, scheduled jobs, health, TOTP."""

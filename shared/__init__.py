"""Code both services use: settings, message contracts and the reusable outbox machinery."""

"""Small applications built on ``flask_outbox``'s public API alone."""

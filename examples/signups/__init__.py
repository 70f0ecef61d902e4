"""Sign-ups whose welcome mail leaves through the outbox: an app, its relay and its worker."""

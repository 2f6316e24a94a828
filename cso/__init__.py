"""cso's shared runtime: settings, bus, outbox, idempotent consumers, local stack and CLI."""

"""cso's shared runtime, what every service imports: settings, bus, outbox, idempotent consumers,
the service runtime, HTTP limits and tokens, streams and database roles, the divisions importer. It
imports no service and nothing of the local stack (cso_local)."""

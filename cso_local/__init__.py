"""The local stack and the `cso` CLI: nats-server and PostgreSQL from their wheels (`servers`), the
stack that runs every service on one machine (`stack`, `supervisor`, `localnats`) and the commands
(`cli`). It may import the services; the runtime (`cso`) imports nothing of it."""

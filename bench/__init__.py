"""National-scale benchmark of cso: a seeded workload over the NBS divisions, an outside publisher,
the real services on a local stack, and measurements (see bench/README.md)."""

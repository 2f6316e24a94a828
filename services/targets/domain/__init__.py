"""targets' pure domain: coverage contributions, metrics, target catalogue and status. No I/O."""

"""registry: organizations, filing and registration, hubs, incubation bases, party organizations."""

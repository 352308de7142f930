"""A build cache's life after its packages are pushed: check, migrate, browse (and prune)."""

"""Model hot-swap."""

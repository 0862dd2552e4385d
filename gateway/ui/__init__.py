"""The session view: a self-contained browser page over the session graph (no build step)."""

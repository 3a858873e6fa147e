"""Container configuration, runtime state and per-container flags."""

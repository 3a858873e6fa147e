"""Checkpoint images: capture, validation and restore."""

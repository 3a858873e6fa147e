"""The runc front: command parsing, routing and pass-through."""

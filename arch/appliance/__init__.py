"""Host installation helpers: containerd/Docker config edits and host verification."""

"""Test harness for integration tests: private containerd/dockerd daemons, offline images,
runc bundles. Reused by the checkpoint/restore integration tests (two containerd "nodes")."""

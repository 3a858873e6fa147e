"""`archctl remote`: install, verify and checkpoint ARCH on hosts over SSH (Fabric), in parallel.

Imported only by archctl's remote subcommand; fabric is an optional dependency (arch[delivery]).
"""

"""Delivery: what platform teams use to put ARCH on hosts and to opt workloads in.

resources (templates/, ansible/ and packer/ in a checkout or inside the wheel), rendering of the
Jinja2 templates, the EC2 userdata bootstrap and the ECS/Batch definitions with a check of the
shape AWS documents. Imported only by archctl's delivery subcommands, never by arch-runc.
"""

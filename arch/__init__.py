"""ARCH: checkpoint/restore for containers, between containerd and runc.

Kept free of imports: `arch-runc`'s pass-through path imports this package.
"""

__version__ = "0.1.0"

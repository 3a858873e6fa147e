"""Why an image cannot be restored: shared by every module that reads one, so that the image
format (metadata) and the job identity it embeds need not import each other for it."""

from __future__ import annotations


class InvalidImage(Exception):
    """The image cannot be restored; `reason` says why (meant for the log and archctl)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ImageMissing(InvalidImage):
    """There is no image at the path (the normal case for a first start)."""

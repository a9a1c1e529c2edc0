"""Errors raised while reading or writing checkpoints."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated or unsafe; the message names the file."""

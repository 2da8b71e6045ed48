"""Errors of weight loading, shared by every weight source."""


class WeightsError(RuntimeError):
    """Weights could not be found or read; the message says what to do instead."""

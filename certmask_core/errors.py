"""The package's one error type."""


class CertMaskError(ValueError):
    """Raised for invalid input; the message names the offending values."""

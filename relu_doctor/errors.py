"""One exception type per layer; the CLI turns each into one line on stderr and exit code 2.

Every message names the bad value and the way out, so the CLI can print it as is.
"""

from __future__ import annotations


class ReluDoctorError(Exception):
    """Base class: the scan could not be done (exit code 2)."""

    exit_code = 2


class UsageError(ReluDoctorError):
    """An option or option combination is invalid."""


class CheckpointError(ReluDoctorError):
    """The model file could not be recognised, trusted or loaded."""


class ArchitectureError(ReluDoctorError):
    """The --arch spec could not be imported, built, or does not match the weights."""


class ProbeError(ReluDoctorError):
    """The probe could not be read or does not fit the model."""


class ObservationError(ReluDoctorError):
    """The forward pass failed or produced nothing to observe."""


class CertifyError(ReluDoctorError):
    """The certification domain could not be read or does not fit the model."""


class ConfigError(ReluDoctorError):
    """A configuration file or environment variable is invalid."""


class RepairError(ReluDoctorError):
    """`relu-doctor fix` could not write a repaired checkpoint."""


class UntrustedCodeError(CheckpointError):
    """The file carries code (pickled module, TorchScript, torch.export); loading it needs --trust.

    The CLI may ask interactively (stdin and stderr are terminals) and retry with trust.
    """

    def __init__(self, message: str, *, format_name: str) -> None:
        super().__init__(message)
        self.format_name = format_name


def first_line(error: BaseException, limit: int | None = 200) -> str:
    """The first line of ``error``'s message, cut to ``limit`` characters; "" when the message is empty.

    The one way relu-doctor quotes a library's exception inside its own one-line message."""
    lines = str(error).strip().splitlines()
    return (lines[0] if limit is None else lines[0][:limit]) if lines else ""

"""One exception hierarchy: each failure class has an exit code and carries a hint.

The CLI prints ``error: <what> (hint: <what to do>)`` and exits with the class's code;
a traceback is shown only with ``--debug``.
"""

from __future__ import annotations


class DeploykitError(Exception):
    """Base class. ``message`` says what is wrong, ``hint`` what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The one line the CLI prints."""
        if self.hint:
            return f"error: {self.message} (hint: {self.hint})"
        return f"error: {self.message}"


class UsageError(DeploykitError):
    """Wrong command-line usage: unknown option, missing argument."""

    exit_code = 2


class InputError(DeploykitError):
    """Bad input: a missing file, a malformed adapter, an unusable model directory."""

    exit_code = 3


class DownloadError(DeploykitError):
    """Fetching a model, adapter or the vendored toolchain failed."""

    exit_code = 4


class MergeError(DeploykitError):
    """Merging an adapter into its base failed."""

    exit_code = 5


class ConversionError(DeploykitError):
    """GGUF conversion or quantization failed, or the llama.cpp toolchain is missing."""

    exit_code = 6


class ToolchainError(ConversionError):
    """A llama.cpp tool is missing, crashed or misbehaved (same exit code as conversion)."""


class VerificationError(DeploykitError):
    """A verification check or a quality gate failed."""

    exit_code = 7


class OllamaError(DeploykitError):
    """The Ollama server is unreachable or refused a request."""

    exit_code = 8


class HealthCheckError(DeploykitError):
    """The deployed model did not pass its health check."""

    exit_code = 9


class PublishError(DeploykitError):
    """Publishing a bundle (``push``) failed: not logged in, no write access, a repo for
    another model, rate limited, the network down, or a file changed since its manifest."""

    exit_code = 10


class Interrupted(DeploykitError):
    """The user interrupted the command (Ctrl-C); what was finished is kept."""

    exit_code = 130


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (rerun with --debug and report it)",
    UsageError.exit_code: "usage error",
    InputError.exit_code: "bad input",
    DownloadError.exit_code: "download failed",
    MergeError.exit_code: "merge failed",
    ConversionError.exit_code: "conversion, quantization or toolchain failed",
    VerificationError.exit_code: "verification or quality gate failed",
    OllamaError.exit_code: "Ollama unreachable or refused",
    HealthCheckError.exit_code: "health check failed",
    PublishError.exit_code: "publishing failed",
    Interrupted.exit_code: "interrupted",
}

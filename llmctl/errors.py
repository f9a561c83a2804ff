"""Expected failures and their exit codes (a public contract, see README "Exit codes").

Core code raises these; only the CLI turns them into `Error: ...` lines and exit codes.
"""

from __future__ import annotations


class ExitCode:
    OK = 0
    FAILED = 1  # the operation failed: network, server, a gate not met
    USAGE = 2  # usage or configuration error
    INTEGRITY = 3  # a checksum did not match; nothing was installed
    INTERRUPTED = 130


class LlmctlError(Exception):
    """An expected failure: one line for the user, an optional hint, an exit code."""

    exit_code: int = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class OperationFailed(LlmctlError):
    """Network, server or engine trouble; a benchmark gate that was not met."""

    exit_code = ExitCode.FAILED


class UsageError(LlmctlError):
    """A bad flag, argument or name."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A bad config file or value; the message names the key path."""


class NotFound(UsageError):
    """A model, service or file that the caller named does not exist."""


class IntegrityError(LlmctlError):
    """Bytes did not match the expected SHA256 (or size); nothing was installed."""

    exit_code = ExitCode.INTEGRITY

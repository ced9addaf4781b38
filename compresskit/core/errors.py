"""The errors compresskit raises for problems in the user's input: a bad setting, a missing model or file,
an existing output, a checkpoint that does not verify, a missing optional package.

Every such error is a `CompresskitError`; front ends (the CLI) report those in one line. Anything else
is a bug and keeps its traceback. The concrete classes also derive from the built-in exception a caller
would expect (``ConfigError`` is a ``ValueError``, a missing model a ``FileNotFoundError``), so code that
catches those keeps working.
"""
from __future__ import annotations


class CompresskitError(Exception):
    """A problem with the user's input; the message names the problem and the fix."""


class ConfigError(CompresskitError, ValueError):
    """A configuration value is out of range; the message says which value and what is accepted."""


class InputError(CompresskitError, ValueError):
    """An argument that cannot work (e.g. a text source without a tokenizer, a sequence too long for the
    model); the message says what to pass instead."""


class MissingFileError(CompresskitError, FileNotFoundError):
    """A file or directory the user named does not exist or is not what it should be."""


class MissingDependencyError(CompresskitError, ImportError):
    """An optional package a setting needs is not installed; the message says what to install."""


# exit codes the command line uses (docs/cli.md): 0 done, 1 an evaluation gate failed (``eval``),
# 2 bad input (a CompresskitError), 3 a gate failed and nothing was saved
EXIT_USER_ERROR = 2
EXIT_GATE_FAILED = 3

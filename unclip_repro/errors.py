"""The package's one user-facing error, low enough for any module to raise (`data/` included;
`cli.py` imports training code and re-exports it from here)."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's error is raised again in the main process as "Caught UserError in
        # DataLoader worker process 0.\nOriginal Traceback …": keep the original one line.
        if message.startswith("Caught UserError") and "UserError: " in message:
            message = message.rstrip().rsplit("UserError: ", 1)[1]
        super().__init__(message)

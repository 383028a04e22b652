"""Where every command writes what it has to say: results to standard output, errors to standard error
(so that ``--json`` output stays one parsable document)."""

from __future__ import annotations

from rich.console import Console

# soft_wrap: a long line (a path, a URL) stays one line, however narrow the terminal or a log file's reader.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

"""The `fedalign` command's exit statuses, one meaning each (docs: Command line), so that a script can tell
what happened without reading the message."""

from __future__ import annotations

OK = 0
# The server answered with an error (its code and message are printed), or the command failed.
ERROR = 1
# The command line or a config file is wrong (Typer's own status for a bad option).
USAGE = 2
# No answer from the server: it is down, or the URL is wrong.
UNREACHABLE = 3
# The command needs an extra that is not installed (`cli.extras`).
NOT_INSTALLED = 4
# `fedalign federations watch`: the run ended without finishing.
CANCELLED = 5
FAILED = 6

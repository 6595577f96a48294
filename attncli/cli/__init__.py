"""The `attn` command line. Importing this package registers every command on `app`."""

from attncli.cli import compute, demo, diff, inspect
from attncli.cli._app import app, main

__all__ = ["app", "compute", "demo", "diff", "inspect", "main"]

"""The `attn` command line. Importing this package registers every command on `app`."""

from attncli.cli import capture, compute, demo, diff, explore, heads, inspect, model
from attncli.cli._app import app, main

__all__ = ["app", "capture", "compute", "demo", "diff", "explore", "heads", "inspect", "main", "model"]

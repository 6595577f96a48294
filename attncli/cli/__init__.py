"""The `attn` command line. Importing this package registers every command on `app`.

The command modules evaluate their annotations when defined (no `from __future__ import
annotations`): Typer reads every command's with `typing.get_type_hints`, which compiles each string
annotation, a few hundred of them (about 13 ms of `attn --help`, a tenth of its own time). Names
imported for type checking only are quoted where they are used.
"""

from attncli.cli import capture, compute, demo, diff, explore, heads, inspect, model
from attncli.cli._app import app, main

__all__ = ["app", "capture", "compute", "demo", "diff", "explore", "heads", "inspect", "main", "model"]

"""The ``lrp`` command: a thin Click layer over lrp_cli's Python API, one module per command.

Only click, PyYAML, Pillow and numpy are imported at start-up; torch, the engine and rich are
imported inside the commands, so that ``lrp --help`` answers at once. stdout carries only what
a command produces (records with ``--jsonl -``, tables); messages and progress go to stderr.
"""

from .app import console_main, main
from .compare import compare
from .evaluate import evaluate
from .explain import explain
from .rules import inspect, presets
from .spray import spray

__all__ = ["console_main", "main"]

for _command in (explain, presets, inspect, evaluate, compare, spray):
    main.add_command(_command)

"""The explain pipeline and its executors (see :mod:`lrp_cli.pipeline.run`)."""

from .inputs import RunInputs, early_decoder, select_inputs
from .local import LocalExecutor
from .options import ExplainOptions, Summary
from .prepare import SetupError
from .run import ExplainRun

__all__ = [
    "ExplainOptions",
    "ExplainRun",
    "LocalExecutor",
    "RunInputs",
    "SetupError",
    "Summary",
    "early_decoder",
    "select_inputs",
]

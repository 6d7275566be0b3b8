"""The ``lrp`` group: its exit statuses (130 on Ctrl-C, quiet on a closed pipe), ``--debug``,
and the executable's fast exit."""

from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..messages import DEBUG_VARIABLE
from ..outputs import silence_stdout
from .terminal import EXIT_INTERRUPTED, EXIT_PIPE, say_error


class _Lrp(click.Group):
    """Exit statuses of the conventions: 130 on Ctrl-C (not Click's 1), quiet on a closed pipe."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.Abort:
            say_error("interrupted")
            code = EXIT_INTERRUPTED
        except click.ClickException as error:
            error.show()
            code = error.exit_code
        except BrokenPipeError:
            silence_stdout()
            code = EXIT_PIPE
        sys.exit(code if isinstance(code, int) else 0)


def console_main() -> None:
    """The ``lrp`` executable: :func:`main`, then, once torch is loaded, an exit that skips
    Python's teardown of torch (0.6 s per run here) after stdout and stderr are flushed;
    every output file is closed by then and worker processes and threads have finished."""
    try:
        main(prog_name="lrp")
        code = 0
    except SystemExit as done:
        code = done.code
    if not isinstance(code, int) or "torch" not in sys.modules:
        sys.exit(code)
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the reader went away, or stdout is closed
        code = code or EXIT_PIPE
    try:
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    os._exit(code)


@click.group(
    cls=_Lrp,
    context_settings={
        "auto_envvar_prefix": "LRP",
        "show_default": True,
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
    },
)
@click.version_option(__version__, "-V", "--version", prog_name="lrp")
@click.option(
    "--debug",
    is_flag=True,
    envvar="LRP_DEBUG",
    help="Also print the traceback of each unexpected error (an engine, model or decoder "
    "failure), which is otherwise one line.",
)
def main(debug: bool) -> None:
    """Explain PyTorch image classifiers with Layer-wise Relevance Propagation (LRP).

    Every option can also be set in the environment: LRP_<COMMAND>_<OPTION>, e.g.
    LRP_EXPLAIN_DEVICE=cpu (a flag on the command line wins).

    \b
    Examples:
      lrp explain sample_images/                 # heatmaps of the photos -> lrp-out/
      lrp explain cat.jpg -t tabby --overlay     # a chosen class, blended over the photo
      lrp explain photos/ -m resnet50 -w resnet50.pth -c epsilon-gamma-box
      find data -name '*.png' -print0 | lrp explain - -0 --jsonl - > records.jsonl
      lrp presets                                # the shipped rule configs
      lrp inspect -c montavon-vgg16 -m vgg16     # which layer gets which rule, and why
      lrp evaluate sample_images/ -c epsilon-plus-flat -c epsilon --baseline random,gradient
    """
    if debug:
        os.environ[DEBUG_VARIABLE] = "1"

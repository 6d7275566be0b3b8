"""``python -m lrp_cli``: the same as the ``lrp`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="lrp")

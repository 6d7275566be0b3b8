"""``python -m lrp_cli``: the same as the ``lrp`` command."""

from .cli import console_main

if __name__ == "__main__":
    console_main()

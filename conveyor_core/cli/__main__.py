"""``python -m conveyor_core.cli``: the same as the ``conveyor`` command."""

from . import main

main()

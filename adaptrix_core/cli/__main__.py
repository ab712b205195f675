"""``python -m adaptrix_core.cli``: the same as the ``adaptrix`` command."""

from adaptrix_core.cli.app import main

main()

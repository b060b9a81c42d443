"""``python -m meshpose.cli`` (and ``torchrun -m meshpose.cli``): the ``meshpose`` command."""

from meshpose.cli import main

main()

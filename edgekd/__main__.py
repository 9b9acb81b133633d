"""`python -m edgekd …` (what `torchrun -m edgekd distill RECIPE` starts in every process)."""

from edgekd.cli import main

main()

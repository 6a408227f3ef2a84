"""`python -m tuneforge ...` is the `tuneforge` command (handy under torchrun or in containers)."""

from tuneforge.cli import main

main()

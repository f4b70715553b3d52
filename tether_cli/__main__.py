"""`python -m tether_cli`: the same as the `tether` command."""

from tether_cli import main

main()

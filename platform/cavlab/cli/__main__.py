"""`python -m cavlab.cli`: the cavlab command."""

from cavlab.cli import main

main()

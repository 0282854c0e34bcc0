"""`python -m orchestra`: the same as the `orchestra` command."""

from orchestra.quick import main

main()

"""`python -m actpatch.cli ...` runs the same command line as `actpatch ...`."""

from actpatch.cli import main

main()

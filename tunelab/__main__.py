"""`python -m tunelab` (and `torchrun ... -m tunelab train CONFIG`): the same as the `tunelab` command."""
import sys

from tunelab.cli import main

sys.exit(main())

"""`python -m vitkit` (and `torchrun -m vitkit train ...`) run the `vitkit` command."""
import sys

from .cli import main

sys.exit(main())

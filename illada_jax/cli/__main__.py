"""`python -m illada_jax.cli ...` is the `illada` command."""

import sys

from illada_jax.cli import main

sys.exit(main())

"""lm-evaluation-harness's own command line with the `illada` model registered and the project's
offline tasks on the include path (unless `--include_path` is given):

    python -m illada_jax.cli.lm_eval run --model illada --batch_size 32 \\
        --model_args checkpoint=runs/tiny,loglikelihood_method=confidence --tasks illada_offline

(lm-eval's `--batch_size` is the ELBO's Monte-Carlo batch; see `illada_jax.eval.harness`.)
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    from illada_jax.eval import harness  # noqa: F401  (registers the `illada` model)
    from illada_jax.eval import tasks as shipped_tasks

    argv = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="illada-tasks-") as tmp:
        if not any(arg.startswith("--include_path") for arg in argv):
            argv += ["--include_path", str(shipped_tasks.materialize(tmp))]
        sys.argv = [sys.argv[0], *argv]
        cli_evaluate()


if __name__ == "__main__":
    main()

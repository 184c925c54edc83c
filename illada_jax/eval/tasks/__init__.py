"""The lm-eval tasks this project ships: small, offline, made from the embedded corpus.

- `kjv_next_word` (multiple_choice; acc, acc_norm): which of four words continues a verse.
- `kjv_verse_end` (generate_until; exact_match): generate the last three words of a verse.

Both carry the tag `illada_offline`. The data (`*.jsonl`, rebuilt by `build.py`) sits next to
the YAML files, which name it by a path relative to themselves. lm-eval hands `data_files` to
`datasets.load_dataset("json", ...)`, which resolves relative paths against the *working
directory*, so `materialize(out_dir)` writes copies of the YAML files with absolute data paths;
`illada_jax.eval.run_tasks` does this for every run. For the lm-eval command line:

    python -c "from illada_jax.eval.tasks import materialize; print(materialize('/tmp/t'))"
    lm-eval run --model ... --include_path /tmp/t --tasks illada_offline
"""

from __future__ import annotations

import importlib.resources
import pathlib

import yaml

from illada_jax.errors import MissingInputError

TASK_NAMES = ("kjv_next_word", "kjv_verse_end")
TAG = "illada_offline"


def task_dir() -> pathlib.Path:
    """The installed directory holding the shipped YAML and jsonl files."""
    return pathlib.Path(str(importlib.resources.files(__name__)))


def _absolute_data_files(config: dict, base: pathlib.Path) -> dict:
    """`config` with every relative `dataset_kwargs.data_files` path made absolute (from base)."""
    kwargs = dict(config.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if files is None:
        return config

    def fix(path: str) -> str:
        return path if pathlib.Path(path).is_absolute() else str(base / path)

    if isinstance(files, str):
        kwargs["data_files"] = fix(files)
    elif isinstance(files, list):
        kwargs["data_files"] = [fix(p) for p in files]
    else:
        kwargs["data_files"] = {
            split: [fix(p) for p in paths] if isinstance(paths, list) else fix(paths)
            for split, paths in files.items()
        }
    return {**config, "dataset_kwargs": kwargs}


def materialize(out_dir: str | pathlib.Path) -> pathlib.Path:
    """Write the shipped task YAMLs into `out_dir` with absolute data paths; returns `out_dir`
    (ready for `TaskManager(include_path=out_dir)` or `lm-eval --include_path`)."""
    source = task_dir()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    yamls = sorted(source.glob("*.yaml"))
    if not yamls:
        raise MissingInputError(
            f"no task YAML files in {source}: the package data is missing; reinstall illada-jax"
        )
    for path in yamls:
        config = _absolute_data_files(yaml.safe_load(path.read_text()), source)
        (out / path.name).write_text(yaml.safe_dump(config, sort_keys=False))
    return out

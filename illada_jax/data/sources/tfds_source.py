"""`--format tfds`: documents from TFDS datasets (the `[tfds]` extra).

The document is the string feature `field`. An input is either
- a TFDS dataset by name, in `tfds.load`'s grammar plus an optional split:
  `NAME[/CONFIG][:VERSION][:SPLIT]`, e.g. `mnist`, `mnist:3.*.*:test`,
  `wiki/20230601.en:1.0.0:train[:10%]`. VERSION is TFDS's `X.Y.Z` (`*` allowed), which no split
  name looks like; SPLIT is TFDS's split string (`train`, `train[:10%]`, `train+test`), default
  `train`. The dataset must already be prepared under `data_dir` (`--data-dir`, default TFDS's:
  `$TFDS_DATA_DIR` or `~/tensorflow_datasets`) by `tfds build` or `download_and_prepare()`:
  nothing is ever downloaded. Its builder code need not be importable (TFDS reads the prepared
  files). Namespaced names (`huggingface:...`) are not supported.
- a prepared dataset directory (`.../NAME/[CONFIG/]VERSION`, holding `dataset_info.json`):
  `DIR` or `DIR:SPLIT`; an existing directory wins over a name.
ArrayRecord datasets are read with `as_data_source` (no TensorFlow); a dataset prepared as
tfrecord (no random access) is read with `as_dataset(shuffle_files=False)`, which needs
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence

from illada_jax import storage
from illada_jax.data.sources.records import SourceError, field_text, spec_parts

# TFDS's version grammar (`tfds.core.Version`, wildcards allowed): never a split name.
_TFDS_VERSION = re.compile(r"(?:0|[1-9]\d*|\*)\.(?:0|[1-9]\d*|\*)\.(?:0|[1-9]\d*|\*)")
_TFDS_GRAMMAR = "NAME[/CONFIG][:VERSION][:SPLIT] (e.g. mnist:3.*.*:test) or DIR[:SPLIT]"


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise SourceError(
            "--format tfds needs the [tfds] extra: pip install 'illada-jax[tfds]'"
        ) from err
    return tfds


@dataclasses.dataclass
class _TfdsInput:
    """One `--input` of `--format tfds`, resolved to a prepared builder and a split."""

    spec: str
    builder: object  # tfds.core.DatasetBuilder (registered, read-only or from a directory)
    split: str

    def info(self) -> dict:
        info = self.builder.info
        return {
            "input": self.spec,
            "dataset": info.full_name,
            "split": self.split,
            "data_dir": str(self.builder.data_dir),
            "file_format": str(getattr(info.file_format, "value", info.file_format)),
            "examples": int(info.splits[self.split].num_examples),
        }


def _looks_like_directory(base: str) -> bool:
    """A path rather than a TFDS name: absolute, relative with ./ or ../, a URL, or existing."""
    if base.startswith(("/", ".")) or "://" in base:
        return True
    try:
        return storage.path(base).is_dir()
    except (OSError, ValueError):
        return False


def _tfds_input(tfds, spec: str, data_dir: str | None, field: str) -> _TfdsInput:
    parts = spec_parts(spec)
    base, rest = parts[0], parts[1:]
    if base and _looks_like_directory(base):
        if len(rest) > 1:
            raise SourceError(f"tfds input {spec!r}: expected {_TFDS_GRAMMAR}")
        try:
            builder = tfds.builder_from_directory(base)
        except (OSError, ValueError) as err:
            raise SourceError(
                f"{base} is not a prepared TFDS dataset directory (NAME/[CONFIG/]VERSION holding "
                f"dataset_info.json): {err}"
            ) from err
        item = _TfdsInput(spec, builder, (rest[0] if rest else "") or "train")
    else:
        version = rest.pop(0) if rest and _TFDS_VERSION.fullmatch(rest[0]) else None
        split = (rest.pop(0) if rest else "") or "train"
        if rest or not base:
            raise SourceError(f"tfds input {spec!r}: expected {_TFDS_GRAMMAR}")
        name = f"{base}:{version}" if version else base
        from tensorflow_datasets.core import constants

        root = data_dir or constants.get_default_data_dir()
        hint = (
            f"nothing is downloaded here: prepare it under {root} first (`tfds build "
            f"{base} --data_dir={root} --file_format=array_record`, or tfds.builder(name, "
            "data_dir=...).download_and_prepare()), or pass --data-dir where it is prepared, "
            "or its dataset directory as --input"
        )
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except (ValueError, AssertionError) as err:  # DatasetNotFoundError; version, config
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise SourceError(
                f"TFDS dataset {name!r}: not registered and not prepared under {root} "
                f"({first}); {hint}"
            ) from err
        if not builder.is_prepared():
            raise SourceError(
                f"TFDS dataset {name!r} is not prepared under {root} (no {builder.data_dir}); "
                f"{hint}"
            )
        item = _TfdsInput(spec, builder, split)
    try:
        item.builder.info.splits[item.split]  # also slices and sums: train[:10%], train+test
    except (KeyError, ValueError) as err:
        raise SourceError(
            f"TFDS dataset {item.builder.info.full_name}: no split {item.split!r} ({err}); its "
            f"splits are {sorted(item.builder.info.splits)}"
        ) from err
    features = list(item.builder.info.features.keys())
    if field not in features:
        raise SourceError(
            f"TFDS dataset {item.builder.info.full_name} has no feature {field!r}; its "
            f"features are {features}; pass --field"
        )
    return item


def _tfds_records(tfds, item: _TfdsInput):
    try:
        return item.builder.as_data_source(split=item.split)
    except NotImplementedError:  # prepared as tfrecord: no random access; read with tf.data
        pass
    except (ValueError, KeyError) as err:  # an unknown split
        raise SourceError(f"tfds input {item.spec!r}: {err}") from err
    file_format = getattr(item.builder.info.file_format, "value", item.builder.info.file_format)
    try:
        dataset = item.builder.as_dataset(split=item.split, shuffle_files=False)
    except ImportError as err:
        raise SourceError(
            f"{item.builder.info.full_name} was prepared as {file_format}, which has no random "
            "access: reading it needs TensorFlow (pip install tensorflow), or prepare it again "
            "with file_format=array_record (`tfds build --file_format=array_record`)"
        ) from err
    except (ValueError, KeyError) as err:
        raise SourceError(f"tfds input {item.spec!r}: {err}") from err
    return tfds.as_numpy(dataset)


def tfds_documents(inputs, stats, field: str, data_dir: str | None = None) -> Iterator[str]:
    tfds = _import_tfds()
    items = [_tfds_input(tfds, spec, data_dir, field) for spec in inputs]  # all checked first
    for item in items:
        for record in _tfds_records(tfds, item):
            text = field_text(record, field, stats)
            if text is not None:
                yield text


def describe(inputs: Sequence[str], field: str, data_dir: str | None) -> dict:
    """What tfds inputs resolve to (name, version, split, files), for the manifest."""
    tfds = _import_tfds()
    items = [_tfds_input(tfds, spec, data_dir, field).info() for spec in inputs]
    return {"data_dir": data_dir, "tfds": items}

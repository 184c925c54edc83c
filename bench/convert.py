"""Wall time and peak host memory of converting a 1B-shaped HF checkpoint to a native one.

    python bench/convert.py [--preset llada_1b] [--dtype bfloat16] [--param-dtype auto]
                            [--shard-gb 2] [--workdir /tmp] [--json out.json]

Writes a synthetic checkpoint with the preset's shapes in the LLaDA (untied) or iLLaDA (tied)
layout — random N(0, 0.02) weights in `--dtype` (default bf16, as the released checkpoints),
sharded at about `--shard-gb` GB with an index — through the safetensors numpy API, one shard in
memory at a time. Then a child process runs `hf_to_native` and `save_native` (the work of
`illada convert --from hf --to native`) and reports, from /proc/self/status, its resident-set
high-water mark (VmHWM) after importing the libraries, after reading and after saving. The target
is a peak of about the model in the target dtype plus the largest tensor on top of the baseline,
not twice the model. Everything written is deleted at the end.

Prints a table and a final line `RESULT convert_peak_rss_mb=<float> convert_s=<float>`
(peak: the child's VmHWM over the whole conversion; time: read + save).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np


def _hwm_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_checkpoint(preset: str, dtype_name: str, shard_bytes: int, dst: pathlib.Path) -> dict:
    """A random HF checkpoint with `preset`'s shapes; returns sizes for the table."""
    from safetensors.numpy import save_file

    from illada_jax.ckpt import convert, hf
    from illada_jax.config.presets import MODEL_PRESETS
    from illada_jax.config.schema import ModelConfig

    cfg = ModelConfig(**MODEL_PRESETS[preset], param_dtype=dtype_name)
    layout = convert.default_layout(cfg)
    dtype = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[dtype_name]
    itemsize = np.dtype(dtype).itemsize
    specs = hf.tensor_specs(cfg, layout)
    tensors = [(name, spec.hf_shape) for spec in specs for name in spec.hf_names(cfg.n_layers)]
    shards = hf._shard_plan([(n, math.prod(s) * itemsize) for n, s in tensors], shard_bytes)
    shapes = dict(tensors)
    rng = np.random.default_rng(0)
    dst.mkdir(parents=True)
    weight_map = {}
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        batch = {
            n: (0.02 * rng.standard_normal(shapes[n], dtype=np.float32)).astype(dtype)
            for n in names
        }
        save_file(batch, str(dst / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
        del batch
    total = sum(math.prod(s) for s in shapes.values()) * itemsize
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dst / hf.INDEX_FILE).write_text(json.dumps(index))
    (dst / "config.json").write_text(json.dumps(hf.config_to_hf(cfg, layout)))
    largest = max(math.prod(s) for s in shapes.values())
    return dict(layout=layout, shards=len(shards), checkpoint_bytes=total,
                largest_tensor_elems=largest)  # fmt: skip


def child(src: str, dst: str, param_dtype: str) -> None:
    """Run the conversion and print one JSON line of timings and memory high-water marks."""
    import jax  # noqa: F401  (count the libraries in the baseline, as `illada convert` would)

    from illada_jax.ckpt import convert, hf

    baseline = _hwm_mb()
    start = time.perf_counter()
    cfg, params = hf.hf_to_native(src, param_dtype=None if param_dtype == "auto" else param_dtype)
    read_s = time.perf_counter() - start
    after_read = _hwm_mb()
    model_bytes = sum(a.nbytes for a in _leaves(params))
    start = time.perf_counter()
    convert.save_native(cfg, params, dst)
    save_s = time.perf_counter() - start
    print(json.dumps(dict(baseline_mb=baseline, after_read_mb=after_read, peak_mb=_hwm_mb(),
                          read_s=read_s, save_s=save_s, model_bytes=model_bytes,
                          param_dtype=cfg.param_dtype)))  # fmt: skip


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llada_1b")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                        help="dtype of the synthetic HF checkpoint")  # fmt: skip
    parser.add_argument("--param-dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="native parameter dtype (auto: the checkpoint's)")  # fmt: skip
    parser.add_argument("--shard-gb", type=float, default=2.0)
    parser.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--child", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.param_dtype)
        return

    root = pathlib.Path(tempfile.mkdtemp(prefix="illada-bench-convert-", dir=args.workdir))
    try:
        start = time.perf_counter()
        info = write_checkpoint(args.preset, args.dtype, int(args.shard_gb * 1e9), root / "hf")
        write_s = time.perf_counter() - start
        cmd = [sys.executable, __file__, "--param-dtype", args.param_dtype,
               "--child", str(root / "hf"), str(root / "native")]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode:
            sys.exit(f"conversion failed:\n{run.stderr[-3000:]}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)

    mb = 1e6
    model_mb = result["model_bytes"] / mb
    largest_mb = info["largest_tensor_elems"] * (2 if args.dtype == "bfloat16" else 4) / mb
    convert_s = result["read_s"] + result["save_s"]
    rows = [
        ("preset / layout", f"{args.preset} / {info['layout']}"),
        ("checkpoint dtype -> params", f"{args.dtype} -> {result['param_dtype']}"),
        ("shards", info["shards"]),
        ("checkpoint size (MB)", f"{info['checkpoint_bytes'] / mb:.0f}"),
        ("native params (MB)", f"{model_mb:.0f}"),
        ("largest HF tensor (MB)", f"{largest_mb:.0f}"),
        ("write synthetic checkpoint (s)", f"{write_s:.1f}"),
        ("hf_to_native (s)", f"{result['read_s']:.1f}"),
        ("save_native (s)", f"{result['save_s']:.1f}"),
        ("RSS after imports (MB)", f"{result['baseline_mb']:.0f}"),
        ("peak RSS after read (MB)", f"{result['after_read_mb']:.0f}"),
        ("peak RSS after save (MB)", f"{result['peak_mb']:.0f}"),
        ("read peak - baseline, / params", f"{(result['after_read_mb'] - result['baseline_mb']) / model_mb:.2f}x"),
        ("total peak - baseline, / params", f"{(result['peak_mb'] - result['baseline_mb']) / model_mb:.2f}x"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    results = {**info, **result, "write_s": write_s, "convert_s": convert_s}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"RESULT convert_peak_rss_mb={result['peak_mb']:.1f} convert_s={convert_s:.2f}")


if __name__ == "__main__":
    from illada_jax.cli._quiet import quiet_startup

    quiet_startup()  # before JAX starts a backend: no libtpu / absl start-up lines on CPU hosts
    main()

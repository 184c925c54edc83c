"""HF conversion memory/time and the 8B AOT compile time, in one line.

    python bench/interop.py

Runs `bench/convert.py` (a synthetic 1B-shaped HF checkpoint converted to a native checkpoint in
a child process: peak RSS and seconds) and `bench/compile.py` (the illada_8b recipe on v5p-256:
global batch 640 x 8192, splash attention, full remat) as separate processes, prints their outputs, and ends with
`RESULT convert_peak_rss_mb=<float> convert_s=<float> aot_compile_s=<float>`.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

HERE = pathlib.Path(__file__).parent


def _run(script: str) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, str(HERE / script)], capture_output=True, text=True, check=False
    )
    print(result.stdout)
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{script} failed with exit code {result.returncode}")
    line = [s for s in result.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return dict(re.findall(r"(\w+)=(\S+)", line))


def main() -> None:
    convert = _run("convert.py")
    compile_ = _run("compile.py")
    print(
        f"RESULT convert_peak_rss_mb={convert['convert_peak_rss_mb']} "
        f"convert_s={convert['convert_s']} aot_compile_s={compile_['aot_compile_s']}"
    )


if __name__ == "__main__":
    from illada_jax.cli._quiet import quiet_startup

    quiet_startup()  # before JAX starts a backend: no libtpu / absl start-up lines on CPU hosts
    main()

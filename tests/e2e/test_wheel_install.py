"""`python -m build` packages the project completely: the wheel holds every file of the package
(tokenizer assets and the lm-eval task files included) and the recipes of `configs/` (as
`illada_jax/recipes/`), the sdist holds the sources and builds the same wheel, and the wheel,
installed into a fresh virtual environment that cannot see this checkout, finds those recipes and
runs `illada params` and a 2-step `illada train` from a directory outside it.

Everything is offline: the builds use this environment's setuptools (`--no-isolation`), pip
installs the wheel alone (`--no-deps --no-index`), and the fresh environment reaches the
dependencies through a `.pth` file naming this environment's site-packages as a plain path. A
plain path line does not run that directory's own `.pth` files, so the editable install of this
checkout (an import hook started from one of them) stays invisible there.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest
from _cli import FAST_TRAIN

from illada_jax.config import experiments, flags

pytest.importorskip("build", reason="needs the PyPI package `build` (the [dev] extra)")
try:
    _SETUPTOOLS = importlib.metadata.version("setuptools")
except importlib.metadata.PackageNotFoundError:
    _SETUPTOOLS = "0 (not installed)"
if int(_SETUPTOOLS.split(".")[0]) < 77:
    pytest.skip(
        f"setuptools {_SETUPTOOLS} here; pyproject.toml's build needs >= 77 (the [dev] extra)",
        allow_module_level=True,
    )

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = "illada_jax"
RECIPES = "illada_jax/recipes"  # where the wheel puts the checkout's configs/*.py
# Besides the code: what the package reads at run time through importlib.resources.
DATA_FILES = (
    "illada_jax/data/tokenizers/assets/sp1k.model",
    "illada_jax/data/tokenizers/assets/default_sp8k.model",
    "illada_jax/eval/tasks/kjv_next_word.yaml",
    "illada_jax/eval/tasks/kjv_next_word.jsonl",
    "illada_jax/eval/tasks/kjv_verse_end.yaml",
    "illada_jax/eval/tasks/kjv_verse_end.jsonl",
)


def _tiny_params() -> tuple[int, int]:
    """(total, non-embedding) parameters of the built-in `config:tiny`, counted from its shape:
    2 layers of d_model 128, 4 query and 2 key/value heads of 32, SwiGLU width 512, a 1024-piece
    vocabulary with tied embeddings, RMSNorm scales only, no biases."""
    layers, d_model, heads, kv_heads, head_dim, mlp, vocab = 2, 128, 4, 2, 32, 512, 1024
    attention = 2 * d_model * heads * head_dim + 2 * d_model * kv_heads * head_dim  # q, o; k, v
    swiglu = 3 * d_model * mlp  # gate, up, down
    norms = 2 * d_model  # before attention and before the MLP
    non_embedding = layers * (attention + swiglu + norms) + d_model  # + the final norm
    return vocab * d_model + non_embedding, non_embedding


def _run(command: list, cwd: pathlib.Path, env: dict | None = None, timeout: float = 300):
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    )
    return result


def _reach_our_dependencies(python: pathlib.Path, cwd: pathlib.Path) -> pathlib.Path:
    """A `.pth` line in the fresh environment naming this environment's site-packages (see the
    module docstring); returns the fresh environment's site-packages."""
    fresh_site = pathlib.Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
             cwd=cwd).stdout.strip()
    )  # fmt: skip
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (fresh_site / "_illada_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return fresh_site


def _project_files() -> list[str]:
    """The working tree's files (tracked and untracked, less what git ignores)."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        names = [name for name in listing.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # not a git work tree
        names = ["pyproject.toml", "README.md"] + [
            str(path.relative_to(ROOT)) for path in (ROOT / PACKAGE).rglob("*")
        ]
    return [
        name
        for name in names
        if (ROOT / name).is_file() and "__pycache__" not in pathlib.PurePath(name).parts
    ]


def _package_files(source: pathlib.Path) -> set[str]:
    """What the wheel should hold of the source tree: the package and the recipe files."""
    return {
        str(path.relative_to(source)) for path in (source / PACKAGE).rglob("*") if path.is_file()
    } | {f"{RECIPES}/{path.name}" for path in (source / "configs").glob("*.py")}


def _wheel_entries(wheel: pathlib.Path) -> dict[str, int]:
    """Name -> CRC of every wheel entry but RECORD (which holds the build's own hashes)."""
    with zipfile.ZipFile(wheel) as archive:
        return {
            info.filename: info.CRC
            for info in archive.infolist()
            if not info.filename.endswith(".dist-info/RECORD")
        }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(source copy, wheel, sdist). The builds run in a copy of the working tree, which keeps
    their build/ and *.egg-info out of the checkout and a stale build/ out of the wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    for name in _project_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    dist = tmp / "dist"
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", dist]
    _run([*build, "--wheel", source], cwd=tmp)
    _run([*build, "--sdist", source], cwd=tmp)
    (wheel,) = dist.glob("illada_jax-*.whl")
    (sdist,) = dist.glob("illada_jax-*.tar.gz")
    return source, wheel, sdist


def test_wheel_holds_every_package_file_and_the_console_script(built):
    source, wheel, _ = built
    expected = _package_files(source)
    entries = _wheel_entries(wheel)
    assert {name for name in entries if name.startswith(f"{PACKAGE}/")} == expected
    assert set(DATA_FILES) <= expected
    assert {f"{RECIPES}/demo.py", f"{RECIPES}/sweeps.py"} <= expected
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        assert "illada = illada_jax.cli:main" in archive.read(entry_points).decode()


def test_sdist_holds_the_sources_and_builds_the_same_wheel(built, tmp_path):
    source, wheel, sdist = built
    with tarfile.open(sdist) as archive:
        top = sdist.name.removesuffix(".tar.gz")
        members = {name.removeprefix(f"{top}/") for name in archive.getnames()}
        archive.extractall(tmp_path, filter="data")
    package_files = {
        str(path.relative_to(source)) for path in (source / PACKAGE).rglob("*") if path.is_file()
    }
    recipe_files = {str(path.relative_to(source)) for path in (source / "configs").glob("*.py")}
    assert {"pyproject.toml", "README.md", "PKG-INFO", *DATA_FILES, "configs/demo.py"} <= members
    assert package_files | recipe_files <= members
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", dist,
         tmp_path / top],
        cwd=tmp_path,
    )  # fmt: skip
    (from_sdist,) = dist.glob("illada_jax-*.whl")
    assert from_sdist.name == wheel.name
    assert _wheel_entries(from_sdist) == _wheel_entries(wheel)


def test_installed_wheel_runs_params_and_train_outside_the_checkout(built, tmp_path):
    _, wheel, _ = built
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    # This environment's pip, run by the fresh interpreter: the wheel alone, nothing fetched.
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "--no-cache-dir", wheel],
        cwd=tmp_path,
    )  # fmt: skip
    fresh_site = _reach_our_dependencies(python, tmp_path)

    work = tmp_path / "elsewhere"  # no checkout's configs/ found from here
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT), "the pytest base temp is inside the checkout"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")

    where = _run(
        [python, "-c", "import illada_jax; from illada_jax.config import registry; "
         "print(illada_jax.__file__); print(registry.configs_dir())"],
        work, env,
    )  # fmt: skip
    imported, recipes = (pathlib.Path(line).resolve() for line in where.stdout.split("\n")[:2])
    assert imported.is_relative_to(fresh_site.resolve()), imported
    assert not imported.is_relative_to(ROOT), imported
    assert recipes == (fresh_site / RECIPES).resolve(), recipes  # the installed copy

    illada = venv / "bin" / "illada"
    total, non_embedding = _tiny_params()
    # `tiny_sft` exists only in configs/demo.py (not built in); it fine-tunes the tiny model
    # unchanged, so its count is tiny's.
    assert "tiny_sft" not in experiments.EXPERIMENTS
    sft_model = flags.experiment_from_flags(["config:tiny_sft"]).model  # this checkout's recipe
    assert sft_model == flags.experiment_from_flags(["config:tiny"]).model
    for name in ("tiny", "tiny_sft"):
        params = _run([illada, "params", f"--config=config:{name}"], work, env)
        assert f"total_params={total}\n" in params.stdout, (name, params.stdout)
        assert f"non_embedding_params={non_embedding}\n" in params.stdout, (name, params.stdout)

    run = tmp_path / "run"
    fast = [arg for arg in FAST_TRAIN if not arg.startswith("--config=set:train.steps=")]
    train = [illada, "train", f"--workdir={run}", "--config=config:tiny", *fast,
             "--config=set:train.steps=2"]  # fmt: skip
    _run(train, work, env)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2], records
    assert (run / "checkpoints" / "2").is_dir(), sorted(p.name for p in run.iterdir())


def test_the_notebooks_install_cell_installs_the_wheel_in_a_fresh_runtime(built, tmp_path):
    """The notebooks' first code cell, as a fresh Colab runtime meets it: an interpreter without
    illada-jax, the built wheel in `dist/` beside the notebook. The cell installs the wheel (pip
    here gets no index and no dependencies: they come through the `.pth` line, as in the test
    above), then the quickstart's next cells import the installed package and train."""
    _, wheel, _ = built
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    cells = {nb.name: [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
             for nb in notebooks}  # fmt: skip
    install = {"".join(code[0]["source"]) for code in cells.values()}
    assert len(install) == 1, "the notebooks' install cells differ"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)  # with pip, as a runtime has
    python = venv / "bin" / "python"
    fresh_site = _reach_our_dependencies(python, tmp_path)

    runtime = tmp_path / "content"  # Colab's working directory, the notebook and dist/ in it
    (runtime / "dist").mkdir(parents=True)
    shutil.copy2(wheel, runtime / "dist" / wheel.name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", ILLADA_QUICK="1",
               PIP_NO_INDEX="1", PIP_NO_DEPS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")  # fmt: skip
    missing = _run([python, "-c", "import importlib.util as u; print(u.find_spec('illada_jax'))"],
                   runtime, env)  # fmt: skip
    assert missing.stdout.strip() == "None", missing.stdout  # a runtime without the project

    quickstart = cells["01_quickstart.ipynb"]
    script = "\n\n".join("".join(cell["source"]) for cell in quickstart[:4])
    script += "\n\nprint('installed at', illada_jax.__file__)\n"
    # `-c`, as a kernel runs cells: a __main__ without a file, which the data preparation's
    # spawned workers do not re-run
    result = _run([python, "-c", script], runtime, env, timeout=900)
    where = pathlib.Path(result.stdout.split("installed at ")[-1].strip()).resolve()
    assert where.is_relative_to(fresh_site.resolve()), where
    assert "training loss" in result.stdout and "held-out bound" in result.stdout, result.stdout

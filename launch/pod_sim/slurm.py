"""`sbatch`, `srun` and `squeue`: a SLURM cluster of stand-in nodes.

`sbatch SCRIPT` reads the script's `#SBATCH` directives (those `launch/slurm.py` writes; others
are refused), gives the job an id whose JAX coordinator port is free (`world.free_job_id`) and
runs the script detached (`run_job`), as SLURM's batch step: in the submit directory, with the
submitter's environment (SLURM exports it by default) plus SLURM's job variables, its output in
`--output` (`%x` job name, `%j` job id). `srun CMD` then starts the tasks: the cluster has the
rehearsal's `hosts` nodes, one task each, so a job asking for more runs on those (its
SLURM_NTASKS and the rest describe what ran). Every task gets SLURM's step variables
(`world.job_environment`: what `jax.distributed.initialize()` reads) and node-local scratch
(its own TMPDIR and ILLADA_CACHE); the submit directory and HOME are shared, as on a cluster.
`--kill-on-bad-exit=1` stops the other tasks when one fails. `squeue` lists the jobs that have
not ended.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

from pod_sim import machine, world

DIRECTIVES = ("job-name", "nodes", "ntasks-per-node", "gpus-per-node", "time", "output",
              "cpus-per-task", "partition", "account")  # fmt: skip


def _job_path(job_id: int | str) -> pathlib.Path:
    return world.root() / "slurm" / f"{job_id}.json"


def sbatch(argv: list[str]) -> int:
    if len(argv) != 1:
        world.fail("sbatch", f"the stand-in takes one script and no options (got {argv})")
    script = pathlib.Path(argv[0]).resolve()
    directives = {}
    for line in script.read_text().splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --") :].partition("=")
            if key not in DIRECTIVES:
                world.fail("sbatch", f"the stand-in does not know #SBATCH --{key}")
            directives[key] = value
    job_id = world.free_job_id()
    name = directives.get("job-name", script.name)
    output = directives.get("output", "slurm-%j.out").replace("%x", name).replace("%j", str(job_id))
    record = {"id": job_id, "name": name, "state": "RUNNING", "directives": directives,
              "output": str(pathlib.Path.cwd() / output), "script": str(script)}  # fmt: skip
    world.write_json(_job_path(job_id), record)
    cli = pathlib.Path(__file__).resolve().with_name("cli.py")
    log = pathlib.Path(record["output"])
    world.spawn([sys.executable, str(cli), "_slurm_job", str(job_id)], env=dict(os.environ),
                cwd=pathlib.Path.cwd(), log=log)  # fmt: skip
    print(f"Submitted batch job {job_id}")
    return 0


def run_job(argv: list[str]) -> int:
    """The batch step: the script with SLURM's job variables, its exit code recorded."""
    path = _job_path(argv[0])
    record = world.read_json(path)
    directives = record["directives"]
    nodes = int(directives.get("nodes", "1"))
    env = {
        **os.environ,
        "SLURM_JOB_ID": str(record["id"]),
        "SLURM_JOB_NAME": record["name"],
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_NTASKS_PER_NODE": directives.get("ntasks-per-node", "1"),
        "SLURM_SUBMIT_DIR": os.getcwd(),
    }
    code = subprocess.run(["bash", record["script"]], env=env).returncode
    world.write_json(
        path,
        {
            **world.read_json(path),
            "state": "COMPLETED" if code == 0 else "FAILED",
            "exit_code": code,
        },
    )
    return code


def srun(argv: list[str]) -> int:
    if "SLURM_JOB_ID" not in os.environ:
        world.fail("srun", "error: no job allocation (run srun inside an sbatch script)")
    count = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    options, command = argv[:count], argv[count:]
    kill_on_bad_exit = "--kill-on-bad-exit=1" in options
    if set(options) - {"--kill-on-bad-exit=1"} or not command:
        world.fail("srun", f"the stand-in takes [--kill-on-bad-exit=1] COMMAND (got {argv})")
    asked = int(os.environ["SLURM_NNODES"]) * int(os.environ["SLURM_NTASKS_PER_NODE"])
    tasks = min(asked, world.settings()["hosts"])
    job_id = int(os.environ["SLURM_JOB_ID"])
    processes = []
    for index in range(tasks):
        scratch = world.root() / "slurm" / f"{job_id}-node{index}"
        for sub in ("tmp", "cache"):
            (scratch / sub).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **world.job_environment(job_id, index, tasks),
               "SLURM_NODEID": str(index), "TMPDIR": str(scratch / "tmp"),
               "ILLADA_CACHE": str(scratch / "cache")}  # fmt: skip
        processes.append(subprocess.Popen(command, env=env, start_new_session=True))
    return _wait(processes, kill_on_bad_exit)


def _wait(processes: list[subprocess.Popen], kill_on_bad_exit: bool) -> int:
    while any(p.poll() is None for p in processes):
        if kill_on_bad_exit and any(p.poll() not in (None, 0) for p in processes):
            for p in processes:
                if p.poll() is None:
                    world.stop_group(p.pid, machine.STOP_TIMEOUT)
        time.sleep(0.2)
    return next((p.returncode for p in processes if p.returncode), 0)


def squeue(argv: list[str]) -> int:
    print(f"{'JOBID':>8} {'NAME':16} STATE")
    for path in sorted((world.root() / "slurm").glob("*.json")):
        record = world.read_json(path)
        if record["state"] in ("PENDING", "RUNNING"):
            print(f"{record['id']:>8} {record['name']:16} {record['state']}")
    return 0

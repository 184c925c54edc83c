"""A simulated pod on one machine, for the pod rehearsal (`launch/rehearse.py`).

Stand-ins for the cloud CLIs a pod job goes through (`gcloud`, `xpk`, `docker`, `sbatch`/`srun`),
for what runs on a TPU VM (`sudo`, `systemctl`, `gcsfuse`, `apt-get`, `curl`, `uv`), and the
"hosts" they act on: directories with their own HOME, environment and processes. The bucket is
the GCS emulator (`illada_jax/tools/gcs_emulator.py`'s patched `gcp-storage-emulator`), keeping
its objects as files, so a gcsfuse mount can be a link to them.

- `world`: the directory everything lives in, the hosts and their environments;
- `cli`: the entry point of every stand-in (`python launch/pod_sim/cli.py NAME ARGS...`);
- `cloud`: `gcloud` (TPUs, ssh/scp, storage);
- `machine`: the host tools (`sudo`, `systemctl`, `gcsfuse`, `mountpoint`, `apt-get`, `curl`,
  `uv`, `hostname`, `lsb_release`);
- `containers`: `docker` (build, push, pull, run) and `xpk` (a JobSet of pods);
- `slurm`: `sbatch`, `srun`, `squeue`;
- `documented`: the documented pod commands the rehearsal runs, read from README.md and
  docs/pods.md.
"""

"""`gcloud`: TPU VMs and queued resources made of stand-in hosts, ssh/scp to them, and Cloud
Storage on the emulator.

`compute tpus tpu-vm|queued-resources create` makes the hosts (`world.create_host`): a TPU VM is
one node, a queued resource `--node-count` nodes (or one, `--node-id`); the rehearsal's
`hosts` setting is how many workers the whole job gets (split over the nodes), whatever the
accelerator type says a real slice has. Every host's machine environment describes the job to
JAX (`world.job_environment`). A queued resource is ACTIVE at once. `ssh --command` runs the
command with bash on each selected worker, one after another, in its home and login
environment; `scp` copies into the home; `delete` stops every service of every host first.

`storage buckets create|cp|ls|cat` talk to the emulator (gcsfs). `auth configure-docker` does
nothing (the stand-in registry needs no credentials).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

from pod_sim import machine, world

TOOL = "gcloud"
BOOLEAN_FLAGS = ("--spot", "--reserved", "--quiet", "--force", "-r", "--recursive", "-q",
                 "--uniform-bucket-level-access")  # fmt: skip


def gcloud(argv: list[str]) -> int:
    if argv[:2] == ["compute", "tpus"] and len(argv) > 3:
        return tpus(argv[2], argv[3], argv[4:])
    if argv[:1] == ["storage"] and len(argv) > 1:
        return storage(argv[1:])
    if argv[:2] == ["auth", "configure-docker"]:
        return 0
    world.fail(TOOL, f"the stand-in does not know `gcloud {' '.join(argv[:3])}`", 2)


def _parser(*flags: str, positional: tuple[str, ...] = ("name",)) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=TOOL, add_help=False)
    for name in positional:
        parser.add_argument(name, nargs="+" if name == "paths" else None)
    for flag in flags:
        if flag in BOOLEAN_FLAGS:
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag)
    return parser


# --- TPUs ------------------------------------------------------------------------------------

LOCATION = ("--zone", "--project")


def _record_path(name: str) -> pathlib.Path:
    return world.root() / "tpus" / f"{name}.json"


def _find(name: str, group: str) -> tuple[dict, list[dict]]:
    """(the TPU record, the nodes named): `queued-resources NAME` is a queued resource and all
    its nodes; `tpu-vm NAME` is one node, of a TPU VM or of a queued resource (`--node-id`, or
    the `--node-prefix`-N of a multi-slice one)."""
    records = [world.read_json(p) for p in sorted((world.root() / "tpus").glob("*.json"))]
    for record in records:
        if group == "queued-resources" and record["queued"] and record["name"] == name:
            return record, record["nodes"]
        if group == "tpu-vm":
            nodes = [node for node in record["nodes"] if node["name"] == name]
            if nodes:
                return record, nodes
    world.fail(TOOL, f"NOT_FOUND: no {group} {name!r} (created: {_names()})", 1)


def _names() -> str:
    return ", ".join(p.stem for p in sorted((world.root() / "tpus").glob("*.json"))) or "none"


def tpus(group: str, verb: str, argv: list[str]) -> int:
    if group not in ("tpu-vm", "queued-resources"):
        world.fail(TOOL, f"the stand-in does not know `compute tpus {group}`", 2)
    handlers = {"create": create, "describe": describe, "ssh": ssh, "scp": scp, "delete": delete}
    if verb not in handlers:
        world.fail(TOOL, f"the stand-in does not know `compute tpus {group} {verb}`", 2)
    return handlers[verb](group, argv)


def create(group: str, argv: list[str]) -> int:
    flags = ["--accelerator-type", "--spot", "--reserved", *LOCATION]
    flags += ["--version"] if group == "tpu-vm" else ["--runtime-version", "--node-id",
                                                      "--node-count", "--node-prefix"]  # fmt: skip
    args = _parser(*flags).parse_args(argv)
    if _record_path(args.name).exists():
        world.fail(TOOL, f"ALREADY_EXISTS: {args.name}", 1)
    if not args.accelerator_type or not args.zone:
        world.fail(TOOL, "--accelerator-type and --zone are required", 2)
    if group == "tpu-vm":
        names = [args.name]
    elif args.node_count:
        names = [f"{args.node_prefix or args.name}-{k}" for k in range(int(args.node_count))]
    else:
        names = [args.node_id or args.name]
    settings = world.settings()
    per_node = max(1, settings["hosts"] // len(names))
    total, job_id = per_node * len(names), world.free_job_id()
    nodes = []
    for k, node in enumerate(names):
        hosts = []
        for i in range(per_node):
            job = world.job_environment(job_id, k * per_node + i, total)
            host = world.create_host(f"{args.name}-n{k}-w{i}", f"{node}-w-{i}",
                                     world.machine_environment(job))  # fmt: skip
            hosts.append(host.id)
        nodes.append({"name": node, "hosts": hosts})
    record = {"name": args.name, "queued": group == "queued-resources", "zone": args.zone,
              "accelerator_type": args.accelerator_type, "state": "ACTIVE", "nodes": nodes,
              "job_id": job_id}  # fmt: skip
    world.write_json(_record_path(args.name), record)
    print(f"Created {group} {args.name}: {len(names)} node(s) x {per_node} worker(s) standing in "
          f"for {args.accelerator_type}", file=sys.stderr)  # fmt: skip
    return 0


def describe(group: str, argv: list[str]) -> int:
    args = _parser("--format", *LOCATION).parse_args(argv)
    record, nodes = _find(args.name, group)
    values = {
        "value(state.state)": record["state"],
        "value(state)": "READY",
        "value(networkEndpoints[0].ipAddress)": "127.0.0.1",
    }
    if args.format in values:
        print(values[args.format])
    else:
        print(json.dumps({**record, "nodes": nodes}, indent=1))
    return 0


def _workers(group: str, name: str, node: str | None, worker: str) -> list[world.Host]:
    record, nodes = _find(name, group)
    if group == "queued-resources":
        if node is None:
            world.fail(TOOL, "queued-resources ssh/scp needs --node (all or an index)", 2)
        if node != "all":
            nodes = [record["nodes"][int(node)]]
    hosts = [h for n in nodes for h in n["hosts"]]
    if worker != "all":
        per_node = [n["hosts"] for n in nodes]
        hosts = [h[int(worker)] for h in per_node]
    return [world.Host(h) for h in hosts]


def ssh(group: str, argv: list[str]) -> int:
    args = _parser("--worker", "--node", "--command", *LOCATION).parse_args(argv)
    if args.command is None:
        world.fail(TOOL, "the stand-in runs --command=... only (no interactive sessions)", 2)
    code = 0
    for host in _workers(group, args.name, args.node, args.worker or "0"):
        result = subprocess.run(["bash", "-c", args.command], env=host.base_environment(),
                                cwd=host.home, stdin=subprocess.DEVNULL)  # fmt: skip
        code = code or result.returncode
    return code


def scp(group: str, argv: list[str]) -> int:
    args = _parser("--worker", "--node", *LOCATION, positional=("source", "name")).parse_args(argv)
    name, _, target = args.name.partition(":")
    for host in _workers(group, name, args.node, args.worker or "0"):
        destination = host.home / target if target else host.home
        shutil.copy(args.source, destination)
    return 0


def delete(group: str, argv: list[str]) -> int:
    args = _parser("--force", "--quiet", *LOCATION).parse_args(argv)
    record, nodes = _find(args.name, group)
    for node in nodes:
        for host_id in node["hosts"]:
            machine.stop_all_units(world.Host(host_id))
    _record_path(args.name).unlink()
    print(f"Deleted {group} {args.name}", file=sys.stderr)
    return 0


# --- Cloud Storage ---------------------------------------------------------------------------


def _fs():
    import gcsfs

    return gcsfs.GCSFileSystem(token="anon")


def storage(argv: list[str]) -> int:
    if argv[:2] == ["buckets", "create"]:
        return create_bucket(argv[2:])
    handlers = {"cp": copy, "ls": listing, "cat": cat}
    if argv[0] not in handlers:
        world.fail(TOOL, f"the stand-in does not know `storage {argv[0]}`", 2)
    return handlers[argv[0]](argv[1:])


def create_bucket(argv: list[str]) -> int:
    args = _parser("--location", "--project", "--uniform-bucket-level-access",
                   positional=("url",)).parse_args(argv)  # fmt: skip
    name = args.url.removeprefix("gs://").rstrip("/")
    url = f"{os.environ['STORAGE_EMULATOR_HOST']}/storage/v1/b?project=pod-sim"
    request = urllib.request.Request(url, data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        urllib.request.urlopen(request, timeout=30).read()
    except urllib.error.HTTPError as err:
        world.fail(TOOL, f"HTTPError {err.code}: bucket {name}: {err.read()[:200]!r}", 1)
    print(f"Creating gs://{name}/...", file=sys.stderr)
    return 0


def copy(argv: list[str]) -> int:
    args = _parser("-r", "--recursive", "-q", "--quiet", positional=("paths",)).parse_args(argv)
    *sources, target = args.paths
    if not sources:
        world.fail(TOOL, "cp needs a source and a destination", 2)
    recursive = args.r or args.recursive
    fs = _fs()
    into = target.endswith("/") or len(sources) > 1 or recursive
    for source in sources:
        name = pathlib.PurePosixPath(source.rstrip("/")).name
        destination = f"{target.rstrip('/')}/{name}" if into else target
        if source.startswith("gs://"):
            fs.get(source, destination, recursive=recursive)
        elif os.path.isdir(source):
            if not recursive:
                world.fail(TOOL, f"{source} is a directory: use -r", 1)
            fs.put(source.rstrip("/") + "/", destination.rstrip("/") + "/", recursive=True)
        elif os.path.isfile(source):
            fs.put_file(source, destination)
        else:
            world.fail(TOOL, f"URL {source} matched no objects or files", 1)
    return 0


def listing(argv: list[str]) -> int:
    args = _parser("-r", "--recursive", positional=("paths",)).parse_args(argv)
    fs = _fs()
    for url in args.paths:
        if args.r or args.recursive:
            names = fs.find(url)
        else:
            names = [
                e["name"] + ("/" if e["type"] == "directory" else "")
                for e in fs.ls(url, detail=True)
            ]
        if not names:
            world.fail(TOOL, f"One or more URLs matched no objects: {url}", 1)
        for name in sorted(names):
            print(f"gs://{name}")
    return 0


def cat(argv: list[str]) -> int:
    args = _parser(positional=("paths",)).parse_args(argv)
    fs = _fs()
    for url in args.paths:
        try:
            sys.stdout.buffer.write(fs.cat_file(url))
        except FileNotFoundError:
            world.fail(TOOL, f"URL {url} matched no objects", 1)
    sys.stdout.flush()
    return 0

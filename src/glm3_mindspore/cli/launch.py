"""``glm3 launch``: start a command on N processes with MindSpore's ``msrun`` (data parallel on one or more nodes).

    glm3 launch --nproc 2 -- finetune --config configs/glm3/tiny/run_glm3_tiny_finetune.yaml
    glm3 launch --nproc 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 8118 -- finetune --config run.yaml
    glm3 launch --nproc 2 -- python my_script.py --flag        # any Python script

The command after ``--`` is a ``glm3`` sub-command (``finetune ...``, also
written ``glm3 finetune ...``) or a Python script. Every worker runs it with the
same interpreter as ``glm3`` itself; ``msrun`` adds a scheduler process that
serves the cluster. Worker logs go to ``--log-dir`` (``worker_<rank>.log``); when
the job fails, the end of the failing workers' logs is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import List

from . import COMMANDS, CliError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "launch", help="run a glm3 command (e.g. finetune) on N processes with msrun (data parallel)",
        description="Start `glm3 <command>` (or a Python script) on --nproc processes per node with MindSpore's "
                    "msrun; each process trains on its share of every batch and gradients are averaged.")
    parser.add_argument("--nproc", type=int, required=True, help="processes (devices) on this node")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes in the job (default 1)")
    parser.add_argument("--node-rank", type=int, help="this node's rank (multi-node; default: msrun assigns)")
    parser.add_argument("--master-addr", default="127.0.0.1", help="scheduler address (node 0's IP for multi-node)")
    parser.add_argument("--master-port", type=int,
                        help="scheduler port (default: a free port on one node, 8118 across nodes)")
    parser.add_argument("--log-dir", default="output/msrun_log", help="worker logs (default output/msrun_log)")
    parser.add_argument("--cluster-time-out", type=int, default=600,
                        help="seconds to wait for all processes to join (default 600)")
    parser.add_argument("--no-join", action="store_true", help="return once the processes are spawned")
    parser.add_argument("--dry-run", action="store_true", help="print the msrun command and exit")
    parser.add_argument("task", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="a glm3 sub-command with its arguments, or `python SCRIPT ...` / `SCRIPT.py ...`")
    parser.set_defaults(func=run)


def find_msrun() -> str:
    """``msrun`` of this interpreter's environment (beside ``python``), else the one on PATH."""
    beside = Path(sys.executable).parent / "msrun"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("msrun")
    if found is None:
        raise CliError("msrun not found: it comes with MindSpore >= 2.3 (pip install mindspore); activate the "
                       f"environment that has it (this glm3 runs {sys.executable})")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def task_command(command: List[str]) -> List[str]:
    """The worker command: msrun runs ``python ARGS`` (it prefixes ``python`` to anything else)."""
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("give the command to run after --, e.g. glm3 launch --nproc 2 -- finetune --config run.yaml")
    if command[0] == "glm3":
        command = command[1:]
    if command and command[0] in ("python", "python3", sys.executable):
        return ["python"] + command[1:]
    if command and command[0].endswith(".py"):
        return ["python"] + command
    if command and command[0] in COMMANDS:
        if command[0] == "launch":
            raise CliError("glm3 launch cannot launch itself")
        return ["python", "-m", "glm3_mindspore"] + command
    raise CliError(f"unknown command {command[0]!r}: give a glm3 sub-command ({', '.join(COMMANDS)}), "
                   "`python SCRIPT ...` or `SCRIPT.py ...`")


def msrun_command(args, msrun: str) -> List[str]:
    if args.nproc < 1 or args.nnodes < 1:
        raise CliError("--nproc and --nnodes must be positive")
    port = args.master_port or (free_port() if args.nnodes == 1 else 8118)
    command = [msrun, f"--worker_num={args.nproc * args.nnodes}", f"--local_worker_num={args.nproc}",
               f"--master_addr={args.master_addr}", f"--master_port={port}", f"--log_dir={args.log_dir}",
               f"--join={'False' if args.no_join else 'True'}", f"--cluster_time_out={args.cluster_time_out}"]
    if args.node_rank is not None:
        command.append(f"--node_rank={args.node_rank}")
    return command + task_command(args.task)


def run(args) -> int:
    msrun = find_msrun() if not args.dry_run else (shutil.which("msrun") or "msrun")
    command = msrun_command(args, msrun)
    if args.dry_run:
        print(" ".join(command))
        return 0
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # msrun starts `python`
    print(f"launching {args.nproc * args.nnodes} workers: {' '.join(command)}", flush=True)
    print(f"worker logs: {Path(args.log_dir).resolve()}/worker_<rank>.log", flush=True)
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        _print_failures(Path(args.log_dir))
        print(f"glm3 launch: msrun exited with {result.returncode}", file=sys.stderr)
    return result.returncode


def _print_failures(log_dir: Path, lines: int = 25) -> None:
    for log in sorted(log_dir.glob("worker_*.log")):
        text = log.read_text(encoding="utf-8", errors="replace").splitlines()
        if any("Traceback" in line or "error" in line.lower() for line in text
               if not line.startswith(("[WARNING]", "[INFO]"))):
            tail = [line for line in text if not line.startswith(("[WARNING]", "[INFO]"))][-lines:]
            print(f"--- {log} (last lines) ---", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr)

"""Teacher-generation and learning throughput against the number of processes (torchrun).

Each configuration runs ``python -m torch.distributed.run --standalone --nproc-per-node K -m s4s learn
...`` on the bundled eps model with an empty teacher cache, one after the other (never two at once),
and reads the teacher and learning seconds from its ``--json`` output. The reference for linear
scaling is one process with as many threads as one rank gets.

Usage::

    python benchmarks/distributed_throughput.py --procs 1 2 --threads 1 --out docs/distributed/cpu.md
    python benchmarks/distributed_throughput.py --procs 1 2 4 8 --threads 8 --device auto --teacher-samples 4096

Results and how to read them: docs/distributed/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(procs: int, threads: int, args: argparse.Namespace, out_dir: Path) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="s4s-dist-bench-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "S4S_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), "-m", "s4s",
           "learn", "--nfe", str(args.nfe), "--preset", "fast", "--teacher", args.teacher, "--teacher-samples",
           str(args.teacher_samples), "--teacher-batch-size", str(args.teacher_batch_size), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--val-every", str(args.steps), "--device", args.device,
           "--out", str(out_dir / f"p{procs}-t{threads}.json"), "--force", "--json"]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"procs": procs, "threads": threads, "teacher_s": result["teacher_seconds"], "learn_s": result["seconds"],
            "wall_s": result["wall_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    p.add_argument("--model", default=None, help="model folder (default: the bundled eps MNIST UNet)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--teacher", default="ddim:10")
    p.add_argument("--teacher-samples", type=int, default=128)
    p.add_argument("--teacher-batch-size", type=int, default=16)
    p.add_argument("--nfe", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s4s-dist-bench-out-"))
    rows = [run(k, args.threads, args, work) for k in args.procs]
    base = rows[0]
    lines = [f"| processes | threads each | teacher s | teacher speed-up (x{base['procs']} proc) | learning s | "
             "learning speed-up | wall s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['procs']} | {r['threads']} | {r['teacher_s']:.1f} | "
                     f"{base['teacher_s'] / r['teacher_s']:.2f} | {r['learn_s']:.1f} | "
                     f"{base['learn_s'] / r['learn_s']:.2f} | {r['wall_s']:.1f} |")
    table = "\n".join(lines) + "\n"
    command = "python benchmarks/distributed_throughput.py " + " ".join(sys.argv[1:])
    text = f"Command: `{command}`\n\n{table}"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()

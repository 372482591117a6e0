"""The main job's stack under torch.distributed: one process per GPU, each warming up mhc_ops on
its own GPU and running the stack there, checked bit for bit against a single-GPU run.

  bash scripts/two_rank.sh [--model v4|v4.1] [--hidden-size H] [--layers L] [--tokens T]

scripts/two_rank.sh first runs `python tools/two_rank.py --single REF` (one process, cuda:0, no
torch.distributed), which saves the stack's outputs, then `torchrun --nproc-per-node 2
tools/two_rank.py --compare REF` with NCCL's NVLink multicast off (NCCL_NVLS_ENABLE=0). Each
rank sets its device from LOCAL_RANK, joins an NCCL process group, warms up (warmup logs its
summary line from rank 0 only), runs the stack fused and unfused, and checks: outputs equal to
the single-GPU run bit for bit, no plan launched after its warmup, no CUDA context on the other
rank's GPU. Rank 0 gathers the verdicts over NCCL and prints PASS (exit 0) or FAIL (exit 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import torch

import mhc_ops
from mhc_ops import envs, warmup
from mhc_ops.__main__ import MODELS, Timer, make_model


def run_stack(model_name: str, H: int, layers: int, tokens: int, seed: int,
              device: torch.device) -> dict[str, torch.Tensor]:
    """The main job's stack (python -m mhc_ops) on `device`, fused and unfused: its outputs."""
    spec = MODELS[model_name]
    model = make_model(H, layers, 1024, seed, device)
    tok = torch.randint(1024, (tokens,), generator=torch.Generator().manual_seed(seed))
    tok = tok.to(device)
    out = {}
    with torch.inference_mode():
        for name, fuse in (("fused", True), ("unfused", False)):
            with envs.MHC_FUSE_POST_PRE.override(fuse):
                head, residual = spec.forward(mhc_ops, model, tok, Timer(device))
            out[f"{name}_head"] = head.cpu()
            out[f"{name}_residual"] = residual.cpu()
    return out


def gpus_with_my_context() -> list[int] | None:
    """CUDA indices of the GPUs on which this process holds a context, from nvidia-smi (CUDA's
    indices follow nvidia-smi's with CUDA_DEVICE_ORDER=PCI_BUS_ID and no CUDA_VISIBLE_DEVICES);
    None where that cannot be told."""
    if os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" or \
            os.environ.get("CUDA_VISIBLE_DEVICES") or not shutil.which("nvidia-smi"):
        return None

    def query(what: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", f"--query-{what}", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
        return [[f.strip() for f in line.split(",")] for line in out.splitlines() if line.strip()]

    index_of = {bus.lower(): int(i) for i, bus in query("gpu=index,pci.bus_id")}
    return sorted({index_of[bus.lower()] for pid, bus in query("compute-apps=pid,gpu_bus_id")
                   if pid == str(os.getpid()) and bus.lower() in index_of})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--single", metavar="REF", help="run on cuda:0 and save the outputs")
    mode.add_argument("--compare", metavar="REF", help="as a torchrun rank: compare with REF")
    p.add_argument("--model", choices=tuple(MODELS), default="v4")
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (mhc_ops.cuda_available() and torch.cuda.is_available()):
        print("two_rank: needs the CUDA kernels and a GPU", file=sys.stderr)
        return 2
    H = args.hidden_size or MODELS[args.model].hidden[0]

    if args.single:
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        torch.save(run_stack(args.model, H, args.layers, args.tokens, args.seed, device),
                   args.single)
        print(f"two_rank: single-GPU outputs of the {args.model} stack saved to {args.single}")
        return 0

    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    problems = []
    warmup.warmup(H, max_tokens=args.tokens, device=device, progress=False)
    got = run_stack(args.model, H, args.layers, args.tokens, args.seed, device)
    ref = torch.load(args.compare)
    for k, v in ref.items():
        if not torch.equal(got[k], v):
            problems.append(f"{k} differs from the single-GPU run")
    late = warmup.unwarmed_plans(device)
    if late:
        problems.append(f"{len(late)} plans launched after warmup on {device}")
    torch.cuda.synchronize(device)
    used = gpus_with_my_context()
    if used is not None and used != [local]:
        problems.append(f"CUDA contexts on GPUs {used}, expected [{local}] only")
    verdicts = [None] * world
    dist.all_gather_object(verdicts, (rank, str(device), problems))
    ok = all(not pr for _, _, pr in verdicts)
    if rank == 0:
        for r, d, pr in sorted(verdicts):
            print(f"rank {r} on {d}: " + ("; ".join(pr) if pr else "bit-identical to the "
                                          "single-GPU run, no plan after warmup"))
        print("PASS" if ok else "FAIL")
    dist.barrier()
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

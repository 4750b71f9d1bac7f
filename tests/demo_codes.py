"""The codes of the quick demo, as digests: what the bitwise check in test_evaluate compares against.

    python tests/demo_codes.py OUT     runs `housebox demo --quick` into OUT (1 thread, seed 0) and writes
                                       its digests into tests/data/quick_demo_codes.json, one record per
                                       environment (torch, numpy, CPU kind): this one's replaced, others kept

Re-record only when a change is meant to change what the demo learns or generates, and say so in the commit.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

RECORDED = Path(__file__).resolve().parent / "data" / "quick_demo_codes.json"


def environment() -> dict:
    """What bitwise equality depends on besides the code: the float kernels of torch and numpy on this CPU,
    and whether it computes bf16 natively (then training runs in bf16) and with AMX tiles (other kernels)."""
    import torch

    from housebox.models.precision import cpu_flags, cpu_has_native_bf16

    return {"torch": torch.__version__, "numpy": np.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "native_bf16": cpu_has_native_bf16(), "amx": "amx_bf16" in cpu_flags()}


def recorded_for(current: dict) -> dict | None:
    """The record whose environment this one matches (every field it names equal), or None."""
    records = json.loads(RECORDED.read_text())["records"]
    return next((r for r in records if all(current.get(k) == v for k, v in r["environment"].items())), None)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).astype(np.int64).tobytes()).hexdigest()


def digests(out: Path) -> dict[str, str]:
    """sha256 of the code cache (every track, every level) and of every generated track's codes."""
    found = {}
    for level_dir in sorted((out / "data" / "codes").glob("l*")):
        digest = hashlib.sha256()
        for path in sorted(level_dir.glob("*.npy")):
            digest.update(path.name.encode())
            digest.update(_digest(np.load(path)).encode())
        found[f"cache/{level_dir.name}"] = digest.hexdigest()
    for npz in sorted((out / "evaluation" / "samples").glob("*/codes.npz")):
        with np.load(npz) as codes:
            found.update({f"samples/{npz.parent.name}/{k}": _digest(codes[k])
                          for k in sorted(codes.files) if k.startswith("l")})
    return found


def main(out: str) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from housebox.cli import main as housebox

    if not (Path(out) / "evaluation" / "evaluation.json").exists():
        assert housebox(["demo", "-o", out, "--quick", "--device", "cpu"]) == 0
    current = environment()
    others = [r for r in json.loads(RECORDED.read_text())["records"] if r["environment"] != current]
    records = others + [{"environment": current, "digests": digests(Path(out))}]
    RECORDED.write_text(json.dumps({"records": records}, indent=1) + "\n")
    print(f"wrote {RECORDED} ({len(records)} environments)")


if __name__ == "__main__":
    main(sys.argv[1])

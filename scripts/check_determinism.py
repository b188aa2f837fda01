"""Is a training run bit-reproducible? Trains the demo's first 31 steps (30 at avg-pool C = 4, one at
full resolution) with the given torch thread counts and prints a hash of the final weights per run.

    python3 scripts/check_determinism.py 2 1 2      # needs stores/instruments (c2fdata build)

Same thread count -> the same hash (run to run, on one machine); another thread count changes the
order of float sums in the matrix products and so the weights (docs/RESULTS.md, determinism).
"""

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from c2ftrain.recipe import load_recipe
from c2ftrain.trainer import PhaseTrainer


def weights_hash(threads: int, store: str) -> tuple[str, float]:
    torch.set_num_threads(threads)
    recipe = load_recipe("demo", {"store": store, "data.extra_eval_splits": [],
                                  "phases": [{"method": "pool-avg", "factor": 4, "steps": 30},
                                             {"method": "none", "factor": 1, "steps": 1}]})
    out_dir = Path(tempfile.mkdtemp())
    outcome = PhaseTrainer(recipe, recipe.phases, out_dir, "c2f", device="cpu").run()
    state = torch.load(out_dir / "final.pt", weights_only=True)["model"]
    digest = hashlib.sha1(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()[:16]
    return digest, outcome.metric


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":  # a child: one thread count, a fresh process
        digest, metric = weights_hash(int(sys.argv[2]), sys.argv[3])
        print(f"torch threads {sys.argv[2]}: weights sha1 {digest}, eval accuracy {metric:.4f}")
        sys.exit(0)
    store = "stores/instruments"
    for threads in sys.argv[1:] or ["2", "1", "2"]:
        subprocess.run([sys.executable, __file__, "--one", threads, store], check=True)

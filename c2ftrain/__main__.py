"""`python -m c2ftrain run ...` (what `torchrun --nproc_per_node=N -m c2ftrain run ...` starts)."""

from c2ftrain.cli import main

main()

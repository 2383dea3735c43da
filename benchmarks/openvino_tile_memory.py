"""Where a real-size tile's buffers live: resident memory after the warm-up tile and the peak over two more tiles,
for PyTorch and for ``--cpu_openvino``, with the whole-body CT network nnU-Net's planner makes (the plan of
``cpu_network_options.py``: 32 -> 320 features, patch 112 x 128 x 128, random weights) on 2 threads.

``python benchmarks/openvino_tile_memory.py`` (2026-12-07, 2-core AMD EPYC): PyTorch 1.13 GB after the warm-up
tile, peak 2.75 GB, 1.11 GB after two more tiles (a tile's ~1.6 GB of activations, freed after it); OpenVINO
2.73 GB after the warm-up tile and after two more, peak 2.78 GB (its buffers are kept). The chunked predictor's RAM
estimate follows this (``ChunkBudgets.activations_in_base``). One process per mode: the peak is the process's
high-water mark.
"""

import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, tempfile, torch
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from cpu_network_options import build_network, plan  # nnU-Net's planner and network builder, as the benchmark uses
from nnunet_ctorg.inference.chunk_budgets import current_rss_gb, peak_rss_gb
from nnunet_ctorg.inference.openvino_network import OpenVINONetworks

with tempfile.TemporaryDirectory(prefix="openvino_tile_memory_") as tmp:
    plans, dataset_json = plan(Path(tmp), 8)
net, _, cm = build_network(plans, dataset_json, seed=0)
torch.set_num_threads(2)
patch = tuple(cm.patch_size)
if sys.argv[1] == "openvino":
    run = OpenVINONetworks(1, patch, cm.network_arch_init_kwargs["strides"]).network_for(None, net, 2)
else:
    def run(x):
        with torch.inference_mode():
            return net(x)
run(torch.zeros((1, 1, *patch)))
base = current_rss_gb()
for _ in range(2):
    run(torch.randn((1, 1, *patch)))
print(f"{sys.argv[1]}: {base:.2f} GB after the warm-up tile, peak {peak_rss_gb():.2f} GB, "
      f"{current_rss_gb():.2f} GB after two more tiles")
"""


def main() -> None:
    for mode in ("pytorch", "openvino"):
        subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, mode, str(Path(__file__).parent)],
                       check=True, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()

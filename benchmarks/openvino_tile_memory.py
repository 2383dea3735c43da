"""Where a real-size tile's buffers live: resident memory after the warm-up tile and the peak over two more tiles,
for PyTorch and for ``--cpu_openvino``, with nnU-Net's default whole-body CT network (32 -> 320 features, patch
112 x 128 x 128, random weights) on 2 threads.

``python benchmarks/openvino_tile_memory.py`` (2026-12-07, 2-core AMD EPYC): PyTorch 0.78 GB after the warm-up,
peak 2.36 GB (a tile's 1.59 GB of activations, freed after it); OpenVINO 2.25 GB after the warm-up, peak 2.30 GB
and no growth on later tiles (its buffers are kept). The chunked predictor's RAM estimate follows this
(``ChunkBudgets.activations_in_base``). One process per mode: the peak is the process's high-water mark.
"""

import subprocess
import sys

CHILD = """
import sys, torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunet_ctorg.inference.chunk_budgets import current_rss_gb, peak_rss_gb
from nnunet_ctorg.inference.openvino_network import OpenVINONetworks

strides = [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
net = PlainConvUNet(1, 6, (32, 64, 128, 256, 320, 320), torch.nn.Conv3d, [(1, 3, 3)] + [(3, 3, 3)] * 5, strides,
                    (2,) * 6, 8, (2,) * 5, True, torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None,
                    torch.nn.LeakyReLU, {"inplace": True}).eval()
torch.set_num_threads(2)
patch = (112, 128, 128)
if sys.argv[1] == "openvino":
    run = OpenVINONetworks(1, patch, strides).network_for(None, net, 2)
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
        subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, mode], check=True)


if __name__ == "__main__":
    main()

"""Training-iteration time on the CPU: nnU-Net's planned 3d_fullres network vs the demo's 3d_cpu_demo.

Both networks are built from the same plans file (the demo's, by default from a finished
``nnunet_ctorg_demo`` run) and timed in the same run: forward + backward + SGD step with deep
supervision on a batch of 2, torch using all cores. Prints seconds per iteration and their ratio.

    python benchmarks/cpu_iteration.py [--plans PLANS_JSON]
"""

import argparse
import json
import os
import time
from pathlib import Path

DEFAULT_PLANS = Path("nnunet_ctorg_demo/nnUNet_preprocessed/Dataset601_CTORGPhantom/nnUNetPlans_demo.json")


def seconds_per_iteration(plans: dict, configuration: str, n_labels: int, repeats: int) -> tuple[float, list[int]]:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration(configuration)
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, n_labels, deep_supervision=True)
    opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.99, nesterov=True)
    x = torch.randn(cm.batch_size, 1, *cm.patch_size)
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        loss = sum(o.float().mean() for o in net(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first iteration warms up
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], list(cm.patch_size)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=Path, default=DEFAULT_PLANS, help=f"plans file. Default: {DEFAULT_PLANS}")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per network. Default: 3")
    args = parser.parse_args()
    if not args.plans.is_file():
        raise SystemExit(f"plans file not found: {args.plans} (run nnunet_ctorg_demo first, or pass --plans)")
    torch.set_num_threads(os.cpu_count() or 1)
    plans = json.loads(args.plans.read_text())
    rows = {}
    for configuration in ("3d_fullres", "3d_cpu_demo"):
        rows[configuration] = seconds_per_iteration(plans, configuration, 7, args.repeats)
        print(f"{configuration:<12} patch {rows[configuration][1]}: {rows[configuration][0]:.2f} s/iteration")
    print(f"ratio 3d_fullres / 3d_cpu_demo: {rows['3d_fullres'][0] / rows['3d_cpu_demo'][0]:.1f}x "
          f"({os.cpu_count()} CPU cores, torch {torch.__version__})")


if __name__ == "__main__":
    main()

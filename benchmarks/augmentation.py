"""Augmentation speed per batch: nnU-Net's CPU pipeline vs ours on the CPU and on CUDA (issue 5).

Setting of a 3d_fullres CT plan: batch 2, a 205³ crop per example (nnU-Net's initial patch for a
128³ patch), 6 and 16 labels, three deep-supervision scales. Labels are blocky random organs,
the image a CT-like z-scored volume.

(a) ``nnUNetTrainer.get_training_transforms`` exactly as the trainer configures it for this patch
    (±30° rotation, mirroring on all axes), with rotation and scaling forced on (p = 1), run per
    example in one thread as a data-loader worker does (``threadpool_limits(1)``);
(b) ``DeviceAugmentation`` on the CPU, same forcing, one thread and all threads;
(c) ``DeviceAugmentation`` on CUDA when present (synchronised, transfers of the crop included).

Targets: (b)/(a) <= 1.0 on this CPU; (a)/(c) >= 50.

    python benchmarks/augmentation.py [--repeats 5] [--labels 6 16]
"""

import argparse
import math
import statistics
import time

BATCH, CROP, PATCH = 2, (205, 205, 205), (128, 128, 128)
DS_SCALES = [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
CT_STATS = [(60.0, 320.0, -1000.0)]  # mean, std, lower clip (HU) of a CT plan


def make_batch(n_labels: int, seed: int = 0):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, n_labels, (BATCH, 1, 12, 12, 12), generator=g).float()
    labels = F.interpolate(coarse, CROP, mode="nearest").to(torch.int16)
    hu = torch.linspace(-1000, 1500, n_labels)[labels.long()] + 30 * torch.randn(labels.shape, generator=g)
    image = (hu - CT_STATS[0][0]) / CT_STATS[0][1]
    labels[:, :, :10] = -1  # the loader's padding at one border, as in a crop at the edge of a scan
    return image.float(), labels


def nnunet_pipeline():
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    pipeline = nnUNetTrainer.get_training_transforms(
        PATCH, (-math.radians(30), math.radians(30)), DS_SCALES, (0, 1, 2), False)
    for t in pipeline.transforms:
        if isinstance(t, SpatialTransform):
            t.p_rotation, t.p_scaling = 1.0, 1.0
    return pipeline


def our_pipeline(seed: int = 0):
    from nnunet_ctorg.augmentation import AugmentationParameters, build_device_augmentation

    parameters = AugmentationParameters().with_probabilities(p_rotation=1.0, p_scaling=1.0)
    return build_device_augmentation(parameters, PATCH, CT_STATS, deep_supervision_scales=DS_SCALES, seed=seed)


def time_it(fn, repeats: int, sync=lambda: None) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per measurement (median reported)")
    parser.add_argument("--labels", type=int, nargs="+", default=[6, 16], help="label counts to test")
    args = parser.parse_args()

    import torch

    threads = torch.get_num_threads()
    print(f"batch {BATCH}, crop {CROP} -> patch {PATCH}, torch {torch.__version__}, {threads} CPU threads, "
          f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    for n_labels in args.labels:
        print(measure(n_labels, args.repeats, threads), flush=True)


def measure(n_labels: int, repeats: int, threads: int) -> str:
    import torch
    from threadpoolctl import threadpool_limits

    image, labels = make_batch(n_labels)
    reference = nnunet_pipeline()
    ours = our_pipeline()

    def run_nnunet():
        for b in range(BATCH):
            reference(image=image[b].clone(), segmentation=labels[b].clone())

    def run_ours():
        ours(image.clone(), labels.clone())

    with threadpool_limits(limits=1, user_api=None):
        torch.set_num_threads(1)
        t_a = time_it(run_nnunet, repeats)
        t_b1 = time_it(run_ours, repeats)
    torch.set_num_threads(threads)
    t_b = time_it(run_ours, repeats)
    line = (f"{n_labels:2d} labels: (a) nnU-Net {t_a * 1000:7.0f} ms/batch | (b) ours CPU 1 thread "
            f"{t_b1 * 1000:6.0f} ms ((b)/(a) {t_b1 / t_a:.2f}), {threads} threads {t_b * 1000:6.0f} ms "
            f"({t_b / t_a:.2f})")
    if torch.cuda.is_available():
        pinned_image, pinned_labels = image.pin_memory(), labels.pin_memory()
        ours_cuda = our_pipeline()

        def run_cuda():
            ours_cuda(pinned_image.to("cuda", non_blocking=True), pinned_labels.to("cuda", non_blocking=True))

        t_c = time_it(run_cuda, max(repeats, 20), torch.cuda.synchronize)
        line += f" | (c) ours CUDA {t_c * 1000:6.1f} ms ((a)/(c) {t_a / t_c:.0f}x faster)"
    return line


if __name__ == "__main__":
    main()

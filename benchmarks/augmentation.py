"""Augmentation speed per batch: nnU-Net's CPU pipeline vs ours on the CPU and on CUDA (issues 5, 18).

Setting of a 3d_fullres CT plan: batch 2, 128³ patch, 6 and 16 labels, three deep-supervision
scales. Labels are blocky random organs, the image a CT-like z-scored volume. Each pipeline gets
the crop its trainer's loader gives it: nnU-Net's initial patch (205³) and ours, sized from our
ranges (``augmentation_crop_size``, 304 x 310 x 304: scaling up to 1.4 together with rotation).

(a) ``nnUNetTrainer.get_training_transforms`` exactly as the trainer configures it for this patch
    (±30° rotation, mirroring on all axes), with rotation and scaling forced on (p = 1), run per
    example in one thread as a data-loader worker does (``threadpool_limits(1)``);
(b) ``DeviceAugmentation`` on the CPU, same forcing, linear labels (the default) and nearest, one
    thread and all threads;
(c) ``DeviceAugmentation`` on CUDA when present: CUDA events around the host-to-device copy of the
    pinned crop and the pipeline (median per batch).

Targets: (b)/(a) <= 1.0 on this CPU; (a)/(c) >= 50.

    python benchmarks/augmentation.py [--repeats 5] [--labels 6 16]
"""

import argparse
import math
import statistics
import time

BATCH, NNUNET_CROP, PATCH = 2, (205, 205, 205), (128, 128, 128)
DS_SCALES = [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
CT_STATS = [(60.0, 320.0, -1000.0)]  # mean, std, lower clip (HU) of a CT plan


def our_parameters(label_interpolation: str = "linear"):
    from nnunet_ctorg.augmentation import AugmentationParameters

    return AugmentationParameters(label_interpolation=label_interpolation).with_probabilities(
        p_rotation=1.0, p_scaling=1.0)


def our_crop() -> tuple[int, ...]:
    from nnunet_ctorg.augmentation import augmentation_crop_size

    return augmentation_crop_size(our_parameters(), PATCH)


def make_batch(n_labels: int, crop, seed: int = 0):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, n_labels, (BATCH, 1, 12, 12, 12), generator=g).float()
    labels = F.interpolate(coarse, crop, mode="nearest").to(torch.int16)
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


def our_pipeline(n_labels: int, label_interpolation: str = "linear", seed: int = 0):
    from nnunet_ctorg.augmentation import build_device_augmentation

    return build_device_augmentation(our_parameters(label_interpolation), PATCH, CT_STATS,
                                     deep_supervision_scales=DS_SCALES, seed=seed)


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
    crop = our_crop()
    print(f"batch {BATCH}, patch {PATCH}, crop nnU-Net {NNUNET_CROP}, ours {crop} "
          f"({math.prod(crop) / math.prod(NNUNET_CROP):.2f}x the voxels), torch {torch.__version__}, {threads} CPU "
          f"threads, CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    for n_labels in args.labels:
        print(measure(n_labels, args.repeats, threads), flush=True)


def cuda_time(fn, repeats: int) -> float:
    """Median seconds between CUDA events around ``fn`` (the host-to-device copy included)."""
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def measure(n_labels: int, repeats: int, threads: int) -> str:
    import torch
    from threadpoolctl import threadpool_limits

    their_image, their_labels = make_batch(n_labels, NNUNET_CROP)
    image, labels = make_batch(n_labels, our_crop())
    reference = nnunet_pipeline()
    ours = {mode: our_pipeline(n_labels, mode) for mode in ("linear", "nearest")}

    def run_nnunet():
        for b in range(BATCH):
            reference(image=their_image[b].clone(), segmentation=their_labels[b].clone())

    with threadpool_limits(limits=1, user_api=None):
        torch.set_num_threads(1)
        t_a = time_it(run_nnunet, repeats)
        t_b1 = {mode: time_it(lambda p=p: p(image.clone(), labels.clone()), repeats) for mode, p in ours.items()}
    torch.set_num_threads(threads)
    t_b = time_it(lambda: ours["linear"](image.clone(), labels.clone()), repeats)
    line = (f"{n_labels:2d} labels: (a) nnU-Net {t_a * 1000:7.0f} ms/batch | (b) ours CPU 1 thread, linear labels "
            f"{t_b1['linear'] * 1000:6.0f} ms ((b)/(a) {t_b1['linear'] / t_a:.2f}), nearest "
            f"{t_b1['nearest'] * 1000:6.0f} ms ({t_b1['nearest'] / t_a:.2f}); {threads} threads, linear "
            f"{t_b * 1000:6.0f} ms ({t_b / t_a:.2f})")
    if torch.cuda.is_available():
        pinned_image, pinned_labels = image.pin_memory(), labels.pin_memory()
        ours_cuda = our_pipeline(n_labels)

        def run_cuda():
            ours_cuda(pinned_image.to("cuda", non_blocking=True), pinned_labels.to("cuda", non_blocking=True))

        t_c = cuda_time(run_cuda, max(repeats, 20))
        line += f" | (c) ours CUDA {t_c * 1000:6.1f} ms incl. copy ((a)/(c) {t_a / t_c:.0f}x faster)"
    return line


if __name__ == "__main__":
    main()

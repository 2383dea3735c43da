"""The memory model of chunked prediction: how many tile rows a chunk may hold within the RAM and GPU budgets.

:class:`ChunkBudgets` is a base of :class:`~nnunet_ctorg.inference.chunked_predictor.ChunkedPredictor`; it reads
the predictor's ``predictor``, ``chunks`` (:class:`~nnunet_ctorg.inference.chunked_predictor.ChunkSettings`),
``base_gb``, ``n_channels``, ``overlap``, ``prep_block_voxels`` and ``export_block_bytes``.
"""

from pathlib import Path

import numpy as np

from nnunet_ctorg.inference.case_plan import CasePlan
from nnunet_ctorg.inference.chunk_steps import export_bytes_per_voxel

# peak of ``clean_segmentation`` (--postprocess) per voxel, its input label volume included: 3.7 measured on a
# 640 x 725 x 725 head-to-knee phantom's organ labels (the bone's box is the body), with a margin
POSTPROCESS_BYTES_PER_VOXEL = 5.0
# the arrays of the memory model times this: allocator overhead and short-lived copies (a 20-class model on
# a 640-slice scan peaked 3 % above the bare sum)
ESTIMATE_MARGIN = 1.1


def _proc_status_gb(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` (kB) in GB; ``None`` where it is missing."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024**2
    return None


def current_rss_gb() -> float:
    """This process's resident memory (VmRSS), in GB; 0 where the kernel does not report it."""
    rss = _proc_status_gb("VmRSS")
    return 0.0 if rss is None else rss


def peak_rss_gb() -> float:
    """This process's high-water mark of resident memory (VmHWM), in GB."""
    peak = _proc_status_gb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class ChunkBudgets:
    """Chunk lengths within the RAM budget (``chunks.max_ram_gb``) and the GPU budget (``chunks.max_gpu_gb``)."""

    sums_on_device: bool = True  # per case: False where the GPU budget cannot hold one tile row's sums
    # True where the network keeps a tile's buffers from its warm-up run, so they are in ``base_gb`` already:
    # OpenVINO does (benchmarks/openvino_tile_memory.py, real-size network: no growth after the warm-up tile),
    # PyTorch frees them (1.6 GB above its resident memory at the peak: ~ the 1.59 GB of :meth:`_tile_activation_bytes`)
    activations_in_base: bool = False
    last_estimate_gb: float | None = None  # the last case's estimated peak RSS (with a RAM budget)

    def check_whole_volume_steps(self, shape, ct_bytes: int, postprocess: bool, previews: bool, what: str) -> None:
        """Refuse before predicting when ``--postprocess`` or ``--preview``, which run on whole volumes after the
        chunks, cannot stay within ``max_ram_gb``.

        ``ct_bytes``: what the CT holds in memory (0 when read slab by slab). ``--postprocess``:
        :data:`POSTPROCESS_BYTES_PER_VOXEL`; ``--preview``: the labels, the label image, the LPS-oriented
        copies of the CT and the labels.
        """
        if self.chunks.max_ram_gb is None or not (postprocess or previews):
            return
        voxels = float(np.prod(shape))
        need = ct_bytes + 2.0 * voxels  # the labels and the label image written
        if postprocess:
            need = max(need, ct_bytes + POSTPROCESS_BYTES_PER_VOXEL * voxels)
        if previews:
            need = max(need, 2.0 * ct_bytes + 4.0 * voxels)
        total = (self.base_gb * 1024**3 + need) / 1024**3
        if total > self.chunks.max_ram_gb:
            steps = " and ".join(n for n, on in (("--postprocess", postprocess), ("--preview", previews)) if on)
            raise ValueError(f"{what}: {steps} hold(s) whole volumes of this scan: about {total:.1f} GB are needed, "
                             f"more than {self.chunks.budget_name} {self.chunks.max_ram_gb:g}; leave {steps} out (run "
                             f"nnunet_ctorg_postprocess / nnunet_ctorg_preview afterwards) or raise the budget")

    def _rows_per_chunk(self, plan: CasePlan, margin: int, case) -> int:
        """Tile rows per chunk: from ``chunk_mm``, then as many as the GPU and RAM budgets (if any) allow."""
        n_rows = len(plan.starts)
        chunk_mm = self.chunks.chunk_mm
        rows = n_rows
        if chunk_mm is not None:
            length = (300.0 if chunk_mm == "auto" else float(chunk_mm)) / plan.grid.target[plan.k]
            rows = min(max(1, int((length - plan.tile) // max(plan.step, 1)) + 1), n_rows)
        rows = self._rows_within_gpu_budget(rows, plan.step, plan.tile, plan.padded, plan.k)
        self.last_estimate_gb = None
        if self.chunks.max_ram_gb is None:
            return rows
        budget = self.chunks.max_ram_gb * 1024**3
        with_probabilities = case.probabilities is not None
        for r in range(rows, 0, -1):
            estimate = self.estimate_bytes(plan, r, margin, case.volume_bytes, with_probabilities)
            if estimate <= budget:
                self.last_estimate_gb = estimate / 1024**3
                return r
        need = self.estimate_bytes(plan, 1, margin, case.volume_bytes, with_probabilities) / 1024**3
        raise ValueError(f"{case.what}: {self.chunks.budget_name} {self.chunks.max_ram_gb:g} is too small: about "
                         f"{need:.2f} GB are needed with chunks of one tile row (the model and libraries hold "
                         f"{self.base_gb:.1f} GB, the CT and its labels {case.volume_bytes / 1024**3:.1f} GB)")

    def gpu_budget_bytes(self) -> float | None:
        """GPU memory a chunk may add beyond what the process holds on the device now; ``None`` off CUDA."""
        if self.predictor.device.type != "cuda":
            return None
        import torch

        device = self.predictor.device
        allocated = torch.cuda.memory_allocated(device)
        if self.chunks.max_gpu_gb is not None:
            return self.chunks.max_gpu_gb * 1024**3 - allocated
        free, _ = torch.cuda.mem_get_info(device)
        return 0.9 * (free + torch.cuda.memory_reserved(device) - allocated)

    def _tile_activation_bytes(self) -> float:
        """float32 activations of one tile through the network: about 6 feature maps of the first stage's width
        and 3 of the class count, at full patch resolution (the deeper stages are smaller)."""
        cm = self.predictor.configuration_manager
        features = (cm.configuration.get("architecture", {}).get("arch_kwargs", {}).get("features_per_stage")
                    or [32])[0]
        n_classes = self.predictor.label_manager.num_segmentation_heads
        return 4.0 * float(np.prod(cm.patch_size)) * (6 * features + 3 * n_classes)

    def estimate_gpu_bytes(self, rows: int, step: float, tile: int, padded, k: int, sums: bool = True) -> float:
        """GPU bytes of a chunk of ``rows`` tile rows beyond the model: a tile, its mirrored copy and output, the
        network's activations and the Gaussian; with ``sums`` also every fold's half-precision logit and weight
        sums of the chunk and its carried rows, the chunk's float32 input and its divided logits."""
        p = self.predictor
        cm = p.configuration_manager
        n_classes, folds = p.label_manager.num_segmentation_heads, len(p.list_of_parameters or [None])
        patch = float(np.prod(cm.patch_size))
        fixed = self._tile_activation_bytes() + 4.0 * patch * (1 + 2 * self.n_channels + 2 * n_classes)
        if not sums:
            return ESTIMATE_MARGIN * fixed
        plane = float(np.prod(padded)) / padded[k]
        length = (rows - 1) * step + tile
        # the sums, the chunk's input, and the divided logits of a chunk before they go to the CPU
        chunk = (folds * (n_classes + 1) * 2.0 * (length + tile) + 4.0 * self.n_channels * length
                 + 2.0 * n_classes * length) * plane
        return ESTIMATE_MARGIN * (fixed + chunk)

    def _rows_within_gpu_budget(self, rows: int, step: float, tile: int, padded, k: int) -> int:
        """At most ``rows``, as many as the GPU budget holds with the sums on the device; where not even one row
        fits, ``rows`` with the sums on the CPU (:attr:`sums_on_device` False for this case)."""
        self.sums_on_device = True
        budget = self.gpu_budget_bytes()
        if budget is None or not self.predictor.perform_everything_on_device:
            return rows
        for r in range(rows, 0, -1):
            if self.estimate_gpu_bytes(r, step, tile, padded, k) <= budget:
                return r
        self.sums_on_device = False
        return rows

    def estimate_bytes(self, plan: CasePlan, rows: int, margin: int, volume_bytes: int,
                       with_probabilities: bool = False) -> float:
        """Peak RSS (bytes) of a case of ``plan`` predicted in chunks of ``rows`` tile rows.

        Terms: the process before the case (measured with the model on its device); the CT and its labels
        (``volume_bytes``); per fold the half-precision logit and weight sums of a chunk and its carried
        rows; the fold-averaged logits kept for export; and the largest of (a) preprocessing one block of a
        chunk (its original slab as float32, then its prefiltered float64 copy and the block after the first
        step, or three float64 arrays of the partly resampled block) while the chunk's float32 network input
        is filled, (b) the network input and a tile's activations, (c) exporting one block (float64 network
        slab, :func:`~nnunet_ctorg.inference.chunk_steps.export_bytes_per_voxel` per original voxel); with
        :attr:`overlap` one more network input, and a block's preprocessing beside the tile activations. The
        arrays times :data:`ESTIMATE_MARGIN`.
        """
        p = self.predictor
        n_classes, folds = p.label_manager.num_segmentation_heads, len(p.list_of_parameters or [None])
        padded, net, crop_t, k, step, tile = plan.padded, plan.grid.net, plan.grid.crop_t, plan.k, plan.step, plan.tile
        plane_net = float(np.prod(padded)) / padded[k]
        plane_orig = float(np.prod(crop_t)) / crop_t[k]
        ratio = crop_t[k] / net[k]
        length = (rows - 1) * step + tile  # network slices a chunk spans
        carried = length + tile
        sums = folds * (n_classes + 1) * 2.0 * carried * plane_net
        final = n_classes * 2.0 * carried * plane_net
        data = 4.0 * self.n_channels * length * plane_net
        block = min(length, max((self.prep_block_voxels / plane_orig - 2 * margin) / ratio, 8))  # network slices
        orig = min(block * ratio + 2 * margin, crop_t[k]) * plane_orig  # the original slab a block reads
        partly = block * max(plane_orig, plane_net)  # the block after its first (cranio-caudal) resampling step
        prep = 4.0 * orig + max(8.0 * orig + 8.0 * partly, 24.0 * partly) + data
        activations = 0.0 if self.activations_in_base else self._tile_activation_bytes()
        per_voxel = export_bytes_per_voxel(n_classes, with_probabilities)
        exported = min(max(self.export_block_bytes / per_voxel, plane_orig), length * ratio * plane_orig)
        export = 8.0 * (exported / plane_orig / ratio + 2) * plane_net + per_voxel * exported
        if self.overlap:  # the next chunk's input is made while this one runs, and waits through the export
            arrays = volume_bytes + sums + final + data + max(prep + activations, data + activations, export)
        else:
            arrays = volume_bytes + sums + final + max(prep, data + activations, export)
        return self.base_gb * 1024**3 + ESTIMATE_MARGIN * arrays

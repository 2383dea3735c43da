"""Cranio-caudal chunked prediction on top of ``nnUNetPredictor`` that gives nnU-Net's own labels.

A CT is processed in chunks along its cranio-caudal axis, and every step is the whole-scan step of
``nnUNetv2_predict`` restricted to the chunk. Per case, :class:`ChunkedPredictor` coordinates:

1. the plan (:mod:`.case_plan`): the case's network grid (nnU-Net's crop to the whole scan's non-zero voxels,
   its transposed axes, its resampled shape), nnU-Net's tile grid of the *whole* padded scan, the tiles a body
   box keeps, the chunks of tile rows (from ``chunk_mm`` and the RAM/GPU budgets, :meth:`estimate_bytes`) and
   the network slices each original slice's export reads;
2. per chunk, the steps (:mod:`.chunk_preprocessing`, :mod:`.chunk_steps`): its network input (nnU-Net's
   normalisation and resampling at the whole scan's sample positions, from slabs with margins), nnU-Net's
   network call, mirroring and Gaussian over its tiles into half-precision sums carried across chunks
   (:mod:`.tile_chunks`), and the export (nnU-Net's probability resampling, argmax or softmax) of every
   original slice whose network slices are complete, straight into the label volume.

No float array of the whole scan exists. Where the whole-scan run cannot be reproduced the predictor
refuses with a clear message (region-based models, cascades, image-dependent normalisation,
resampling functions other than nnU-Net's default).
"""

import os
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_ctorg.inference.body_crop import BodyCropSettings, image_axes
from nnunet_ctorg.inference.case_plan import CasePlan, NetworkGrid, plan_case
from nnunet_ctorg.inference.chunk_preprocessing import CTPreprocessing, NetworkSlices
from nnunet_ctorg.inference.chunk_steps import LogitSums, SliceExport, TileRunner, export_bytes_per_voxel, network_input
from nnunet_ctorg.inference.slab_resampling import resampling_kind

# normalisations that map each voxel on its own, monotonically (so a slab is normalised as the whole scan)
POINTWISE_NORMALIZATIONS = ("CTNormalization", "NoNormalization")
# peak of ``clean_segmentation`` (--postprocess) per voxel, its input label volume included: 3.7 measured on a
# 640 x 725 x 725 head-to-knee phantom's organ labels (the bone's box is the body), with a margin
POSTPROCESS_BYTES_PER_VOXEL = 5.0
# the arrays of the memory model times this: allocator overhead and short-lived copies (a 20-class model on
# a 640-slice scan peaked 3 % above the bare sum)
ESTIMATE_MARGIN = 1.1


def current_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def peak_rss_gb() -> float:
    """This process's high-water mark of resident memory (VmHWM), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


@dataclass
class ChunkSettings:
    """Chunk length along the cranio-caudal axis, in mm of the network grid, rounded to whole tile rows.

    ``chunk_mm="auto"``: 300 mm, or what ``max_ram_gb`` allows if that is less; ``None``: from
    ``max_ram_gb``, or the whole scan when that is ``None`` too. The labels do not depend on the chunk
    length; RAM and the pre-/post-processing overhead do. ``budget_name``: how messages name the budget
    (the predict command's flag, or the environment variable of a trainer's validation). ``max_gpu_gb``: on
    CUDA, the GPU memory of the process (model included) that the chunk's logit sums, its input and a tile's
    activations must fit in (default: 90 % of what the device has free); chunks are shortened to fit, and
    where one tile row does not fit the sums go to the CPU while the network stays on the GPU.
    """

    chunk_mm: float | str | None = "auto"
    max_ram_gb: float | None = None
    budget_name: str = "--max_ram_gb"
    max_gpu_gb: float | None = None

    def __post_init__(self) -> None:
        if self.chunk_mm not in (None, "auto") and not (isinstance(self.chunk_mm, (int, float)) and self.chunk_mm > 0):
            raise ValueError(f"chunk_mm must be > 0, 'auto' or None, got {self.chunk_mm!r}")
        if self.max_ram_gb is not None and self.max_ram_gb <= 0:
            raise ValueError(f"max_ram_gb must be > 0, got {self.max_ram_gb}")
        if self.max_gpu_gb is not None and not self.max_gpu_gb > 0:
            raise ValueError(f"max_gpu_gb must be > 0, got {self.max_gpu_gb}")


@dataclass
class CaseOutputs:
    """Where one case's prediction goes: ``labels`` (an array, or a streamed
    :class:`~nnunet_ctorg.inference.nifti_slabs.NiftiLabelWriter`), nnU-Net's class ``probabilities`` (a
    :class:`~nnunet_ctorg.inference.probability_export.ProbabilityWriter`) if wanted, the ``body_box`` outside
    which the labels are background, what the case holds outside the chunks (``volume_bytes``, counted by the
    RAM budget), its name in messages and whether to show progress."""

    labels: object
    probabilities: object = None
    body_box: tuple | None = None
    volume_bytes: int = 0
    what: str = "case"
    progress: bool = False


class ChunkedPredictor:
    """Chunked, optionally body-cropped prediction with an initialised ``nnUNetPredictor``.

    Args:
        predictor: ``nnUNetPredictor`` after ``initialize_from_trained_model_folder``.
        chunks: chunk length / RAM budget.
        body_crop: crop the scan in-plane to the body before predicting (``None``: no crop).
    """

    # what one preprocessing step reads (original voxels, margins included) and one export step holds (bytes)
    prep_block_voxels: int = 32 * 2**20
    export_block_bytes: int = 256 * 2**20

    def __init__(self, predictor, chunks: ChunkSettings = ChunkSettings(),
                 body_crop: BodyCropSettings | None = None, overlap: bool | None = None,
                 preprocessed_input: bool = False) -> None:
        self.predictor = predictor
        self.chunks = chunks
        # preprocess the next chunk in a thread while the network runs this one (default: on CUDA, where the
        # network does not need the CPU cores the preprocessing uses)
        self.overlap = predictor.device.type == "cuda" if overlap is None else bool(overlap)
        self.body_crop = body_crop
        cm = predictor.configuration_manager
        self.n_classes = len(predictor.label_manager.all_labels)
        if predictor.label_manager.has_regions:
            raise ValueError("region-based models are not supported by the chunked predictor; use nnUNetv2_predict")
        if cm.previous_stage_name is not None:
            raise ValueError(f"this configuration is a cascade stage (previous stage "
                             f"{cm.previous_stage_name!r}); the chunked predictor runs single-stage models only")
        # cases preprocessed by nnU-Net (a trainer's validation) are read as they are: any normalisation, any channels
        self.n_channels = len(cm.normalization_schemes) if preprocessed_input else 1
        unsupported = [n for n in cm.normalization_schemes if n not in POINTWISE_NORMALIZATIONS]
        if unsupported and not preprocessed_input:
            raise ValueError(f"the model normalises with {unsupported[0]}, which depends on the whole image; the "
                             f"chunked predictor supports {', '.join(POINTWISE_NORMALIZATIONS)}")
        if len(cm.normalization_schemes) != 1 and not preprocessed_input:
            raise ValueError(f"the model takes {len(cm.normalization_schemes)} input channels; the chunked "
                             f"predictor takes single-channel CT models")
        self.preprocessing = None if preprocessed_input else CTPreprocessing(predictor)
        self.export_resampling = resampling_kind(cm.configuration, "probabilities")
        if max(self.export_resampling["order"], self.export_resampling["order_z"]) > 1:
            # scikit-image clips a spline of order > 1 to the whole input's range, known only at the end
            raise ValueError(f"the plans resample probabilities with spline order "
                             f"{self.export_resampling['order']} (order_z {self.export_resampling['order_z']}); "
                             f"chunked prediction exports nnU-Net's default linear resampling (order <= 1) only")
        predictor.network.to(predictor.device)
        self._warm_up_network()
        self.base_gb = current_rss_gb()  # with the model on its device and its runtime loaded
        self.sums_on_device = True  # per case: False where the GPU budget cannot hold one tile row's sums
        self.last_estimate_gb: float | None = None  # the last case's estimated peak RSS (with a RAM budget)

    def _warm_up_network(self) -> None:
        """Run the network once on one zero tile, so that what its first run adds to the process for good (the
        kernels' code pages, thread pools, oneDNN/cuDNN handles: ~50 MB for a tiny network on this CPU) is in
        :attr:`base_gb` and not missing from the RAM budget's estimate. The network's mode is restored."""
        import torch
        from nnunetv2.utilities.helpers import dummy_context

        p = self.predictor
        training = p.network.training
        p.network.eval()
        x = torch.zeros((1, self.n_channels, *p.configuration_manager.patch_size), device=p.device)
        try:
            with torch.inference_mode(), (torch.autocast(p.device.type, enabled=True) if p.device.type == "cuda"
                                          else dummy_context()):
                p.network(x)
        finally:
            p.network.train(training)

    # --- geometry of one case ------------------------------------------------------------------------

    @property
    def label_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.n_classes <= 256 else np.uint16)

    def predict_image(self, image, progress: bool = False, what: str = "image", out=None,
                      probabilities=None) -> np.ndarray | None:
        """Labels (array order of ``sitk.GetArrayFromImage``) of a SimpleITK CT image.

        ``image`` may also be a :class:`~nnunet_ctorg.inference.dicom_series.SeriesVolume` or a
        :class:`~nnunet_ctorg.inference.nifti_slabs.NiftiVolume`, read slab by slab. ``out``: a
        :class:`~nnunet_ctorg.inference.nifti_slabs.NiftiLabelWriter` that receives the labels slab by slab
        (then ``None`` is returned; the chunk axis must be array axis 0); default: a new array.
        ``probabilities``: a :class:`~nnunet_ctorg.inference.probability_export.ProbabilityWriter` that receives
        nnU-Net's class probabilities (``--save_probabilities``; the labels are then their argmax, as in nnU-Net).
        """
        import SimpleITK as sitk

        axial, ap = image_axes(image)
        in_memory = getattr(image, "in_memory", True)
        hu = sitk.GetArrayViewFromImage(image) if in_memory else image
        spacing = image.GetSpacing()[::-1]
        streamed = out is not None
        if streamed and (axial != 0 or tuple(out.shape) != tuple(hu.shape)):
            raise ValueError(f"{what}: labels are streamed along array axis 0 of the CT's shape only")
        labels = out if streamed else np.zeros(hu.shape, dtype=self.label_dtype)
        box = None
        if self.body_crop is not None:
            from nnunet_ctorg.inference.body_crop import body_crop_box

            box = body_crop_box(hu, spacing, axial, ap, self.body_crop, what)
        # the CT (unless read slab by slab), its labels and the label image written (unless streamed)
        volume_bytes = int(np.prod(hu.shape)) * (hu.itemsize * in_memory + 2 * (not streamed))
        self.predict_array(hu, spacing, axial, labels, progress=progress, what=what, volume_bytes=volume_bytes,
                           body_box=box, probabilities=probabilities)
        return None if streamed else labels

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

    # --- the chunked whole-scan computation ----------------------------------------------------------

    def predict_array(self, hu: np.ndarray, spacing, axial: int, out: np.ndarray, *, progress: bool = False,
                      what: str = "image", volume_bytes: int | None = None, body_box: tuple | None = None,
                      probabilities=None) -> None:
        """Write nnU-Net's labels of the CT array ``hu`` (any array order, ``axial`` its chunk axis) into ``out``.

        ``body_box`` (slices of ``hu``): only the tiles that reach the network voxels this box's export
        reads are run; inside the box the labels are those of the whole scan, outside it background.
        ``volume_bytes``: what the case holds outside the chunks (default: ``hu``, ``out`` and a label
        image); the RAM budget counts it. The chunks used are left in ``self.last_chunks`` (tile rows), the
        clip range of the image resampling (normalised; ``None`` where no clip reaches across chunks) in
        ``self.last_clip_range``. ``out`` may be a :class:`~nnunet_ctorg.inference.nifti_slabs.NiftiLabelWriter`
        (``axial`` 0): it gets the exported slabs in order and clears what lies outside ``body_box``.
        ``probabilities``: a :class:`~nnunet_ctorg.inference.probability_export.ProbabilityWriter` for nnU-Net's
        softmax output (background outside ``body_box``). nnU-Net's preprocessing properties of the case (its
        ``.pkl`` keys) are left in ``self.last_properties``.
        """
        if self.preprocessing is None:
            raise ValueError(f"{what}: this predictor was made for preprocessed input (preprocessed_input=True)")
        grid, stats = self.preprocessing.network_grid(hu, spacing, axial)
        tf = grid.tf
        self.last_properties = {"shape_before_cropping": tuple(int(hu.shape[i]) for i in tf),
                                "bbox_used_for_cropping": [[int(a), int(b)] for a, b in grid.bbox_t],
                                "shape_after_cropping_and_before_resampling": tuple(int(n) for n in grid.crop_t)}
        slices = NetworkSlices(self.preprocessing, hu, axial, grid, stats, self.prep_block_voxels)
        self.last_clip_range = slices.clip
        if volume_bytes is None:
            volume_bytes = int(np.prod(out.shape)) * (hu.itemsize + 2)
        case = CaseOutputs(out, probabilities, body_box, volume_bytes, what, progress)
        self._predict_chunks(grid, slices.fill, slices.margin, case)

    def predict_preprocessed(self, data, properties: dict, out, *, progress: bool = False, what: str = "case",
                             volume_bytes: int = 0, probabilities=None) -> None:
        """nnU-Net's labels of a case preprocessed by nnU-Net (its validation input), written into ``out``.

        ``data``: the (1, ...) network-grid array of ``nnUNetDataset.load_case`` (blosc2 or numpy; read a chunk
        of slices at a time), ``properties`` its properties (``spacing``, ``shape_before_cropping``,
        ``bbox_used_for_cropping``, ``shape_after_cropping_and_before_resampling``). The chunks run along
        nnU-Net's outer tile loop, array axis ``transpose_forward[0]`` of the image nnU-Net read; ``out`` (shape:
        ``shape_before_cropping`` transposed back) receives what ``export_prediction_from_logits`` would write,
        slab by slab along that axis (the predictor must be made with ``preprocessed_input=True``).
        ``volume_bytes``: what the case holds outside the chunks (the RAM budget counts it).
        """
        import torch

        p = self.predictor
        pm, cm = p.plans_manager, p.configuration_manager
        if data.ndim != 4 or data.shape[0] != self.n_channels:
            raise ValueError(f"{what}: expected preprocessed data of shape ({self.n_channels}, x, y, z), got "
                             f"{tuple(data.shape)}")
        tf = list(pm.transpose_forward)
        spacing_t = [float(properties["spacing"][i]) for i in tf]
        crop_t = [int(n) for n in properties["shape_after_cropping_and_before_resampling"]]
        target = list(cm.spacing) if len(cm.spacing) == len(crop_t) else [spacing_t[0], *cm.spacing]
        bbox_t = [(int(a), int(b)) for a, b in properties["bbox_used_for_cropping"]]
        # chunks along nnU-Net's outer tile loop (transposed axis 0): every voxel's half-precision sums are then
        # added in nnU-Net's order, seams included
        grid = NetworkGrid(tf, list(pm.transpose_backward), 0, bbox_t, crop_t, [int(n) for n in data.shape[1:]],
                           spacing_t, target)
        self.last_properties = properties

        def fill(view, n_lo: int, n_hi: int) -> None:
            index = [slice(None)] * 3
            index[grid.k] = slice(n_lo, n_hi)
            view[...] = torch.from_numpy(np.ascontiguousarray(data[(slice(None), *index)], dtype=np.float32))

        self._predict_chunks(grid, fill, 0, CaseOutputs(out, probabilities, None, volume_bytes, what, progress))

    def _predict_chunks(self, grid: NetworkGrid, fill, margin: int, case: "CaseOutputs") -> None:
        """The sliding window of the whole network grid in chunks of tile rows, and the export of finished slices.

        ``fill(view, n_lo, n_hi)`` writes network slices [n_lo, n_hi) along ``grid.k`` (unpadded) into the
        (channels, ...) tensor ``view``; ``margin``: original slices the input resampling reads beyond a block.
        """
        import torch
        from tqdm import tqdm

        p = self.predictor
        streamed = not getattr(case.labels, "in_memory", True)
        if streamed:
            case.labels.keep_box = case.body_box
        if case.probabilities is not None:
            case.probabilities.keep_box, case.probabilities.axis = case.body_box, grid.tf[grid.k]
        plan = plan_case(p, grid, case.body_box, self.export_resampling)
        self.last_tiles = (plan.tiles_run, plan.n_tiles)
        if not plan.chunks:  # the box misses the scan's non-zero voxels
            if not streamed:
                case.labels[...] = 0
            self.last_chunks = []
            return
        plan = plan.in_chunks(self._rows_per_chunk(plan, margin, case))
        self.last_chunks = list(plan.chunks)
        sums_device = p.device if p.perform_everything_on_device and self.sums_on_device else torch.device("cpu")
        runner = TileRunner(p, sums_device)
        folds = p.list_of_parameters or [None]  # None: the network's own weights (a trainer's validation)
        sums = LogitSums(len(folds), p.label_manager.num_segmentation_heads, grid.k, sums_device)
        export = SliceExport(plan, self.export_resampling, case.labels, case.probabilities, p.label_manager,
                             self.export_block_bytes)
        inputs = self._chunk_inputs(plan.chunks, lambda chunk: network_input(plan, chunk, self.n_channels, fill))
        with closing(inputs):
            for chunk, data in tqdm(zip(plan.chunks, inputs), total=len(plan.chunks), desc=f"{case.what} chunks",
                                    unit="chunk", leave=False, disable=not case.progress):
                sums.start_chunk(plan.chunk_slices(chunk)[0], data.shape[1:])
                data, tiles = data.to(sums_device), plan.chunk_tiles(chunk)
                for params, (logits, weights) in zip(folds, sums.sums):
                    runner.run(params, data, tiles, logits, weights)
                del data
                export.add_complete(sums, plan.complete_after(chunk))
                export.export_ready()
        if not export.done:
            raise RuntimeError(f"{case.what}: exported {export.exported} of {grid.crop_t[grid.k]} slices")
        if case.body_box is not None and not streamed:  # background outside the box
            for axis, b in enumerate(case.body_box):
                for outside in (slice(0, b.start), slice(b.stop, case.labels.shape[axis])):
                    index = [slice(None)] * 3
                    index[axis] = outside
                    case.labels[tuple(index)] = 0

    def _chunk_inputs(self, groups, chunk_input):
        """The network input of each chunk in turn; with :attr:`overlap`, the next one is computed in a thread
        while the caller runs the current one."""
        if not self.overlap or len(groups) < 2:
            for group in groups:
                yield chunk_input(group)
            return
        from concurrent.futures import ThreadPoolExecutor

        executor = ThreadPoolExecutor(1, thread_name_prefix="chunk-preprocessing")
        try:
            pending = executor.submit(chunk_input, groups[0])
            for i in range(len(groups)):
                data = pending.result()
                if i + 1 < len(groups):
                    pending = executor.submit(chunk_input, groups[i + 1])
                yield data
                del data
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def _rows_per_chunk(self, plan: CasePlan, margin: int, case: "CaseOutputs") -> int:
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

    def estimate_gpu_bytes(self, rows: int, step: float, tile: int, padded, k: int, sums: bool = True) -> float:
        """GPU bytes of a chunk of ``rows`` tile rows beyond the model: a tile, its mirrored copy and output, the
        network's activations and the Gaussian; with ``sums`` also every fold's half-precision logit and weight
        sums of the chunk and its carried rows, the chunk's float32 input and its divided logits."""
        p = self.predictor
        cm = p.configuration_manager
        n_classes, folds = p.label_manager.num_segmentation_heads, len(p.list_of_parameters or [None])
        patch = float(np.prod(cm.patch_size))
        features = (cm.configuration.get("architecture", {}).get("arch_kwargs", {}).get("features_per_stage")
                    or [32])[0]
        fixed = 4.0 * patch * (6 * features + 3 * n_classes) + 4.0 * patch * (1 + 2 * self.n_channels + 2 * n_classes)
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
        cm = p.configuration_manager
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
        features = (cm.configuration.get("architecture", {}).get("arch_kwargs", {}).get("features_per_stage")
                    or [32])[0]
        activations = 4.0 * float(np.prod(cm.patch_size)) * (6 * features + 3 * n_classes)
        per_voxel = export_bytes_per_voxel(n_classes, with_probabilities)
        exported = min(max(self.export_block_bytes / per_voxel, plane_orig), length * ratio * plane_orig)
        export = 8.0 * (exported / plane_orig / ratio + 2) * plane_net + per_voxel * exported
        if self.overlap:  # the next chunk's input is made while this one runs, and waits through the export
            arrays = volume_bytes + sums + final + data + max(prep + activations, data + activations, export)
        else:
            arrays = volume_bytes + sums + final + max(prep, data + activations, export)
        return self.base_gb * 1024**3 + ESTIMATE_MARGIN * arrays

    def chunk_logits(self, hu: np.ndarray, spacing: tuple[float, float, float]):
        """Class logits of a whole (z, y, x) CT on its own grid, one class at a time, through nnU-Net's pipeline.

        nnU-Net's preprocessing, sliding window (TTA, all folds) and its probability resampling function
        are used as ``nnUNetPredictor`` uses them; the export is streamed per class, so the block never
        holds C full-size float arrays (nnU-Net's export holds three such arrays).
        """
        import torch

        from nnunet_ctorg.planning.antialiasing import with_antialiasing

        p = self.predictor
        pm, cm = p.plans_manager, p.configuration_manager
        # a configuration planned with anti-aliasing (nnunet_ctorg_plan_and_preprocess) is preprocessed with it
        preprocessor = cm.preprocessor_class(verbose=False)
        data, _, props = preprocessor.run_case_npy(hu[None].astype(np.float32), None, {"spacing": list(spacing)}, pm,
                                                   with_antialiasing(cm), p.dataset_json)
        logits = p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu().numpy()
        del data
        before_resampling = props["shape_after_cropping_and_before_resampling"]
        spacing_t = [props["spacing"][i] for i in pm.transpose_forward]
        current = cm.spacing if len(cm.spacing) == len(before_resampling) else [spacing_t[0], *cm.spacing]
        bbox, full_shape = props["bbox_used_for_cropping"], props["shape_before_cropping"]
        cropped = any(lo != 0 or hi != n for (lo, hi), n in zip(bbox, full_shape))
        for c in range(logits.shape[0]):
            channel = cm.resampling_fn_probabilities(logits[c:c + 1], before_resampling, current, spacing_t)[0]
            channel = np.asarray(channel, dtype=np.float32)
            if cropped:  # nnU-Net cropped to non-zero voxels: outside is background
                out = np.full(full_shape, 0.0 if c == 0 else -1e4, np.float32)
                out[tuple(slice(lo, hi) for lo, hi in bbox)] = channel
                channel = out
            yield channel.transpose(pm.transpose_backward)


def case_inputs(in_dir: Path, file_ending: str = ".nii.gz") -> dict[str, Path]:
    """Case name -> CT file among the files ending in ``file_ending`` (the model's dataset.json, as nnU-Net).

    nnU-Net's ``CASE_0000<ending>`` and plain ``CASE<ending>`` are both accepted; the two for one case,
    or other channels than ``_0000``, are errors naming the files.
    """
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder not found: {in_dir}")
    cases: dict[str, Path] = {}
    for path in sorted(p for p in in_dir.iterdir() if p.is_file() and p.name.endswith(file_ending)
                       and not p.name.startswith(".")):
        name = path.name[:-len(file_ending)]
        if name.endswith(tuple(f"_{i:04d}" for i in range(1, 10))):
            raise ValueError(f"{path.name}: the chunked predictor takes single-channel CT models only "
                             f"(found channel {name[-4:]})")
        case = name[:-5] if name.endswith("_0000") else name
        if case in cases:
            raise ValueError(f"{cases[case].name} and {path.name} are both case {case!r}; keep one of them")
        cases[case] = path
    return cases


def read_ct_compact(path: Path, what: str):
    """Read a CT for chunked prediction: 3-D, one channel, finite; a float CT holding whole HU becomes int16.

    Many CTs store int16 with ``scl_slope``/``scl_inter`` and are read as float32. Their values are checked
    slab by slab in memory (no second read of the file) and, when they are whole numbers in int16's range,
    the image is cast to int16: half the RAM, the same numbers for nnU-Net (which reads float32).
    """
    import SimpleITK as sitk

    from nnunet_ctorg.inference.dicom_series import DicomSeries, read_dicom_series
    from nnunet_ctorg.io import read_image

    image = read_dicom_series(path) if isinstance(path, DicomSeries) else read_image(path, f"{what}: image")
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise ValueError(f"{what}: the image must be 3-D, got size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{what}: the image has {image.GetNumberOfComponentsPerPixel()} components per voxel")
    if image.GetPixelID() in (sitk.sitkUInt16, sitk.sitkInt32, sitk.sitkUInt32, sitk.sitkInt64, sitk.sitkUInt64):
        extremes = sitk.MinimumMaximumImageFilter()
        extremes.Execute(image)  # e.g. DICOM pixels after RescaleIntercept come as int32
        fits = extremes.GetMinimum() >= -32768 and extremes.GetMaximum() <= 32767
        return sitk.Cast(image, sitk.sitkInt16) if fits else image
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return image
    view = sitk.GetArrayViewFromImage(image)
    whole = True
    for start in range(0, view.shape[0], 16):
        slab = view[start:start + 16]
        bad = int(np.count_nonzero(~np.isfinite(slab)))
        if bad:
            raise ValueError(f"{what}: the CT contains NaN or infinite values (at least {bad} in slices "
                             f"{start}..{min(start + 16, view.shape[0]) - 1} of the array)")
        whole = whole and bool(np.all(slab == np.round(slab))) and slab.min() >= -32768 and slab.max() <= 32767
    del view
    return sitk.Cast(image, sitk.sitkInt16) if whole else image


def read_ct_lazily(case, what: str, temp_dir: str | Path | None = None):
    """A CT whose array axis 0 runs cranio-caudally, read slab by slab: a DICOM series as a :class:`SeriesVolume`,
    a NIfTI file as a :class:`~nnunet_ctorg.inference.nifti_slabs.NiftiVolume` (temporary file in
    ``temp_dir``); anything else :func:`read_ct_compact`'s image."""
    from nnunet_ctorg.inference.dicom_series import DicomSeries, SeriesVolume

    if isinstance(case, DicomSeries):
        volume = SeriesVolume(case)
        if image_axes(volume)[0] == 0:  # chunks run along the files
            return volume
    elif str(case).endswith((".nii", ".nii.gz")) and _slices_along_axis0(case):
        from nnunet_ctorg.inference.nifti_slabs import NiftiVolume

        return NiftiVolume(case, what, temp_dir)
    return read_ct_compact(case, what)


def _slices_along_axis0(path: Path) -> bool:
    """Whether the image's array axis 0 (its stored z) runs cranio-caudally; ``False`` if unreadable."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        return reader.GetDimension() == 3 and image_axes(reader)[0] == 0
    except (RuntimeError, ValueError):
        return False


def predict_folder(chunked: ChunkedPredictor, in_dir: str | Path, out_dir: str | Path,
                   continue_prediction: bool = False, num_parts: int = 1, part_id: int = 0,
                   postprocess: bool = False, previews: bool = False, progress: bool = True,
                   output_type: str = "nifti", save_probabilities: bool = False) -> dict:
    """Predict every CT of ``in_dir`` (the ``part_id``-th of ``num_parts`` shares) into ``out_dir``.

    Outputs are ``CASE<file_ending>`` with the model's file ending, as ``nnUNetv2_predict`` names them. A folder
    without such files is searched for DICOM series (:mod:`nnunet_ctorg.inference.dicom_series`).
    ``output_type``: ``"nifti"`` (the file ending's format), ``"dicom_seg"`` (``CASE.dcm``, a DICOM SEG that
    references the input series; DICOM input only) or ``"both"``. ``save_probabilities``: also ``CASE.npz`` and
    ``CASE.pkl`` as ``nnUNetv2_predict --save_probabilities`` writes them (:mod:`.probability_export`).
    """
    import json

    import SimpleITK as sitk
    from tqdm import tqdm

    from nnunet_ctorg.io import write_image_atomic, write_text_atomic

    if not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be in 0..{num_parts - 1}, got {part_id}")
    if output_type not in ("nifti", "dicom_seg", "both"):
        raise ValueError(f"output_type must be 'nifti', 'dicom_seg' or 'both', got {output_type!r}")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    file_ending = chunked.predictor.dataset_json.get("file_ending", ".nii.gz")
    cases: dict = case_inputs(in_dir, file_ending)
    notes: list[str] = []
    from_dicom = not cases
    if from_dicom:  # no image files with the model's ending: DICOM series, one case each
        from nnunet_ctorg.inference.dicom_series import find_dicom_series

        cases = find_dicom_series(in_dir)
        notes = [n for series in cases.values() for n in series.notes]
        for note in notes:
            print(note)
    if not cases:
        raise ValueError(f"no CT files ending in {file_ending} (the model's file_ending) and no DICOM series in "
                         f"{in_dir}")
    if output_type != "nifti" and not from_dicom:
        raise ValueError(f"--output_type {output_type}: a DICOM SEG references its source series; {in_dir} holds "
                         f"image files, not DICOM series")
    from nnunet_ctorg.inference.dicom_seg import SEG_FILE_ENDING, write_dicom_seg

    endings = {"nifti": [file_ending], "dicom_seg": [SEG_FILE_ENDING], "both": [file_ending, SEG_FILE_ENDING]}
    names = sorted(cases)[part_id::num_parts]
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_map = chunked.predictor.dataset_json["labels"]
    write_text_atomic(json.dumps(chunked.predictor.dataset_json, indent=2), out_dir / "dataset.json")
    write_text_atomic(json.dumps(chunked.predictor.plans_manager.plans, indent=2), out_dir / "plans.json")
    summary: dict = {"predicted": [], "skipped": [], "failed": {}, "seconds": {}, "estimated_peak_gb": {},
                     "notes": notes}
    for name in tqdm(names, desc="cases", unit="case", disable=not progress):
        targets = [out_dir / f"{name}{ending}" for ending in endings[output_type]]
        if save_probabilities:
            targets += [out_dir / f"{name}.npz", out_dir / f"{name}.pkl"]
        if continue_prediction and all(t.is_file() for t in targets):
            summary["skipped"].append(name)
            continue
        t = time.perf_counter()
        image = probabilities = None
        try:
            image = read_ct_lazily(cases[name], name, out_dir) if not previews else read_ct_compact(cases[name],
                                                                                                   name)
            in_memory = getattr(image, "in_memory", True)
            ct_bytes = int(np.prod(image.GetSize())) * (sitk.GetArrayViewFromImage(image).itemsize if in_memory else 0)
            chunked.check_whole_volume_steps(image.GetSize()[::-1], ct_bytes, postprocess, previews, name)
            if save_probabilities:
                from nnunet_ctorg.inference.probability_export import ProbabilityWriter

                heads = chunked.predictor.label_manager.num_segmentation_heads
                probabilities = ProbabilityWriter(out_dir / name, heads, image.GetSize()[::-1], out_dir)
            if (output_type == "nifti" and not postprocess and file_ending in (".nii.gz", ".nii")
                    and not getattr(image, "in_memory", True)):  # slab in, slab out
                from nnunet_ctorg.inference.nifti_slabs import NiftiLabelWriter

                writer = NiftiLabelWriter(out_dir / f"{name}{file_ending}", image.GetSize()[::-1],
                                          chunked.label_dtype, image.GetOrigin(), image.GetSpacing(),
                                          image.GetDirection())
                try:
                    chunked.predict_image(image, progress=progress, what=name, out=writer,
                                          probabilities=probabilities)
                    _close_probabilities(probabilities, image, chunked, progress)
                except BaseException:
                    writer.abort()
                    raise
                writer.close()  # removes the temporary file itself if it fails
                _record_predicted(summary, name, t, chunked)
                continue
            labels = chunked.predict_image(image, progress=progress, what=name, probabilities=probabilities)
            _close_probabilities(probabilities, image, chunked, progress)
            if postprocess:
                from nnunet_ctorg.postprocessing.organ_cleanup import clean_segmentation

                labels = clean_segmentation(labels, image.GetSpacing(), labels_map)
            if output_type != "nifti":
                write_dicom_seg(labels, cases[name].files, labels_map, out_dir / f"{name}{SEG_FILE_ENDING}", name)
            seg = sitk.GetImageFromArray(labels)
            seg.SetOrigin(image.GetOrigin())
            seg.SetSpacing(image.GetSpacing())
            seg.SetDirection(image.GetDirection())
            if output_type != "dicom_seg":
                write_image_atomic(seg, out_dir / f"{name}{file_ending}")
            if previews:
                from nnunet_ctorg.evaluation.previews import save_preview

                lps = sitk.DICOMOrient(image, "LPS")
                save_preview(sitk.GetArrayViewFromImage(lps), {"prediction": sitk.GetArrayFromImage(
                    sitk.DICOMOrient(seg, "LPS"))}, lps.GetSpacing()[::-1], labels_map,
                    out_dir / "previews" / f"{name}.png", title=name)
        except (ValueError, OSError, RuntimeError) as e:
            summary["failed"][name] = str(e)
            continue
        finally:
            if hasattr(image, "close"):  # a NiftiVolume's temporary file
                image.close()
            if probabilities is not None:  # a case that failed before its probabilities were written
                probabilities.abort()
        _record_predicted(summary, name, t, chunked)
    summary["peak_rss_gb"] = round(peak_rss_gb(), 3)
    summary["base_rss_gb"] = round(chunked.base_gb, 3)
    write_text_atomic(json.dumps(summary, indent=2), out_dir / f"chunked_prediction_summary_part{part_id}.json")
    return summary


def _record_predicted(summary: dict, name: str, started: float, chunked: ChunkedPredictor) -> None:
    summary["predicted"].append(name)
    summary["seconds"][name] = round(time.perf_counter() - started, 2)
    if chunked.last_estimate_gb is not None:
        summary["estimated_peak_gb"][name] = round(chunked.last_estimate_gb, 3)


def _close_probabilities(probabilities, image, chunked: ChunkedPredictor, progress: bool) -> None:
    if probabilities is not None:
        from nnunet_ctorg.inference.probability_export import nnunet_properties

        probabilities.close(nnunet_properties(image, chunked.last_properties), progress)


def load_predictor(model_folder: str | Path, folds: list[int | str] | None, checkpoint: str = "checkpoint_final.pth",
                   device: str = "cpu", use_mirroring: bool = True, step_size: float = 0.5):
    """An ``nnUNetPredictor`` loaded from a model folder; missing folds are a clear error."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    model_folder = Path(model_folder)
    if not (model_folder / "plans.json").is_file() or not (model_folder / "dataset.json").is_file():
        raise FileNotFoundError(f"not an nnU-Net model folder (no plans.json/dataset.json): {model_folder}")
    available = sorted(p.name[5:] for p in model_folder.glob("fold_*") if (p / checkpoint).is_file())
    if folds is None:
        folds = available
    if not folds:
        raise FileNotFoundError(f"{model_folder} has no fold_*/{checkpoint}")
    missing = [str(f) for f in folds if str(f) not in available]
    if missing:
        raise FileNotFoundError(f"{model_folder} has no {checkpoint} for fold(s) {', '.join(missing)} "
                                f"(available: {', '.join(available) or 'none'})")
    from nnunet_ctorg.env import ext_trainer_value

    os.environ["nnUNet_extTrainer"] = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))  # finds our trainers
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device != "cpu", device=torch.device(device),
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), [f if f == "all" else int(f) for f in folds],
                                                   checkpoint)
    return predictor

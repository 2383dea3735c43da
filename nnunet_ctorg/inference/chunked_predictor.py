"""Cranio-caudal chunked prediction on top of ``nnUNetPredictor`` that gives nnU-Net's own labels.

A CT is processed in chunks along its cranio-caudal axis, and every step is the whole-scan step of
``nnUNetv2_predict`` restricted to the chunk. Per case, :class:`ChunkedPredictor` coordinates:

1. the plan (:mod:`.case_plan`): the case's network grid (nnU-Net's crop to the whole scan's non-zero voxels,
   its transposed axes, its resampled shape), nnU-Net's tile grid of the *whole* padded scan, the tiles the
   body needs (those a body voxel's export reads), the chunks of tile rows (from ``chunk_mm`` and the RAM/GPU
   budgets, :meth:`estimate_bytes`) and the network slices each original slice's export reads;
2. per chunk, the steps (:mod:`.chunk_preprocessing`, :mod:`.chunk_steps`): its network input (nnU-Net's
   normalisation and resampling at the whole scan's sample positions, from slabs with margins), nnU-Net's
   network call, mirroring and Gaussian over its tiles into half-precision sums carried across chunks
   (:mod:`.tile_chunks`), and the export (nnU-Net's probability resampling, argmax or softmax) of every
   original slice whose network slices are complete, straight into the label volume.

No float array of the whole scan exists. Where the whole-scan run cannot be reproduced the predictor
refuses with a clear message (region-based models, cascades, image-dependent normalisation,
resampling functions other than nnU-Net's default).
"""

from contextlib import closing
from dataclasses import dataclass

import numpy as np

from nnunet_ctorg.inference.body_crop import BodyCropSettings, image_axes
from nnunet_ctorg.inference.case_plan import NetworkGrid, plan_case
from nnunet_ctorg.inference.chunk_budgets import ChunkBudgets, current_rss_gb
from nnunet_ctorg.inference.chunk_preprocessing import CTPreprocessing, NetworkSlices
from nnunet_ctorg.inference.chunk_steps import (
    LogitSums,
    SliceExport,
    TileRunner,
    check_cpu_bf16,
    network_autocast,
    network_input,
    network_threads,
)
from nnunet_ctorg.inference.openvino_network import OpenVINONetworks, check_cpu_openvino
from nnunet_ctorg.inference.slab_resampling import resampling_kind

# normalisations that map each voxel on its own, monotonically (so a slab is normalised as the whole scan)
POINTWISE_NORMALIZATIONS = ("CTNormalization", "NoNormalization")


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
    which the labels are background, the ``body`` (a :class:`~nnunet_ctorg.inference.body_crop.BodyRegion`)
    outside which they are background too (``None``: the whole box counts), what the case holds outside the
    chunks (``volume_bytes``, counted by the RAM budget), its name in messages and whether to show progress."""

    labels: object
    probabilities: object = None
    body_box: tuple | None = None
    volume_bytes: int = 0
    what: str = "case"
    progress: bool = False
    body: object = None


class ChunkedPredictor(ChunkBudgets):
    """Chunked, optionally body-cropped prediction with an initialised ``nnUNetPredictor``.

    Args:
        predictor: ``nnUNetPredictor`` after ``initialize_from_trained_model_folder``.
        chunks: chunk length / RAM budget.
        body_crop: run only the tiles the body needs, background outside it (``None``: every tile, as nnU-Net).
        cpu_bf16: on the CPU, run the network in bfloat16 (``torch.autocast``): faster where the CPU has bf16
            instructions (AVX512-BF16, AMX), but the labels are not exactly nnU-Net's (opt-in; see
            ``benchmarks/cpu_whole_body.py`` for the agreement).
        cpu_openvino: on the CPU, run the network compiled by OpenVINO in float32 (needs the ``openvino``
            package): faster than PyTorch's CPU path, logits within ~1e-3 relative of PyTorch's, so the labels
            are not exactly nnU-Net's (opt-in; ``benchmarks/cpu_whole_body.py`` measures the agreement).
    """

    # what one preprocessing step reads (original voxels, margins included) and one export step holds (bytes)
    prep_block_voxels: int = 32 * 2**20
    export_block_bytes: int = 256 * 2**20

    def __init__(self, predictor, chunks: ChunkSettings = ChunkSettings(),
                 body_crop: BodyCropSettings | None = None, overlap: bool | None = None,
                 preprocessed_input: bool = False, cpu_bf16: bool = False, cpu_openvino: bool = False) -> None:
        if cpu_bf16 and cpu_openvino:
            raise ValueError("cpu_bf16 and cpu_openvino exclude each other (OpenVINO runs in float32 here)")
        if cpu_bf16:
            check_cpu_bf16(predictor.device.type)
        if cpu_openvino:
            check_cpu_openvino(predictor.device.type)
        self.cpu_bf16 = cpu_bf16
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
        strides = cm.network_arch_init_kwargs.get("strides")  # nnU-Net's U-Nets; other architectures: None
        self.openvino = OpenVINONetworks(self.n_channels, cm.patch_size, strides) if cpu_openvino else None
        self.activations_in_base = cpu_openvino  # its warm-up allocates a tile's buffers for good
        predictor.network.to(predictor.device)
        self._warm_up_network()
        self.base_gb = current_rss_gb()  # with the model on its device and its runtime loaded

    def _warm_up_network(self) -> None:
        """Run the network once on one zero tile, so that what its first run adds to the process for good (the
        kernels' code pages, thread pools, oneDNN/cuDNN handles: ~50 MB for a tiny network on this CPU) is in
        :attr:`base_gb` and not missing from the RAM budget's estimate. The network's mode is restored."""
        import torch

        p = self.predictor
        training = p.network.training
        p.network.eval()
        x = torch.zeros((1, self.n_channels, *p.configuration_manager.patch_size), device=p.device)
        try:
            if self.openvino is not None:  # compiles the first fold's network as the first tile would
                network, params = getattr(p.network, "_orig_mod", p.network), (p.list_of_parameters or [None])[0]
                if params is not None:
                    network.load_state_dict(params)
                threads = torch.get_num_threads()
                torch.set_num_threads(network_threads(self.preprocessing is not None))
                try:
                    self.openvino.network_for(params, network, torch.get_num_threads())(x)
                finally:
                    torch.set_num_threads(threads)
                return
            with torch.inference_mode(), network_autocast(p.device.type, self.cpu_bf16):
                p.network(x)
        finally:
            p.network.train(training)

    # --- entry points: a CT image, a CT array, a case nnU-Net preprocessed -----------------------------

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
        box = body = None
        if self.body_crop is not None:
            from nnunet_ctorg.inference.body_crop import body_region

            body = body_region(hu, spacing, axial, ap, self.body_crop, what)
            box = tuple(slice(0, n) for n in hu.shape) if body is None else body.box
            if not self.body_crop.skip_tiles_outside_mask:
                body = None
        # the CT (unless read slab by slab), its labels and the label image written (unless streamed), the body
        volume_bytes = int(np.prod(hu.shape)) * (hu.itemsize * in_memory + 2 * (not streamed))
        volume_bytes += 0 if body is None else body.nbytes
        self.predict_array(hu, spacing, axial, labels, progress=progress, what=what, volume_bytes=volume_bytes,
                           body_box=box, probabilities=probabilities, body=body)
        return None if streamed else labels

    # --- the chunked whole-scan computation ----------------------------------------------------------

    def predict_array(self, hu: np.ndarray, spacing, axial: int, out: np.ndarray, *, progress: bool = False,
                      what: str = "image", volume_bytes: int | None = None, body_box: tuple | None = None,
                      probabilities=None, body=None) -> None:
        """Write nnU-Net's labels of the CT array ``hu`` (any array order, ``axial`` its chunk axis) into ``out``.

        ``body_box`` (slices of ``hu``): only the tiles that reach the network voxels this box's export
        reads are run; inside the box the labels are those of the whole scan, outside it background. ``body``
        (a :class:`~nnunet_ctorg.inference.body_crop.BodyRegion` of ``hu``, inside the box): only the tiles that
        reach the network voxels its voxels' export reads are run; the labels of its voxels are those of the
        whole scan, all others background.
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
        case = CaseOutputs(out, probabilities, body_box, volume_bytes, what, progress, body)
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

    def _predict_chunks(self, grid: NetworkGrid, fill, margin: int, case: CaseOutputs) -> None:
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
        plan = plan_case(p, grid, case.body_box, self.export_resampling, case.body)
        self.last_tiles = (plan.tiles_run, plan.n_tiles)
        if not plan.chunks:  # the box misses the scan's non-zero voxels
            if not streamed:
                case.labels[...] = 0
            self.last_chunks = []
            return
        plan = plan.in_chunks(self._rows_per_chunk(plan, margin, case))
        self.last_chunks = list(plan.chunks)
        sums_device = p.device if p.perform_everything_on_device and self.sums_on_device else torch.device("cpu")
        runner = TileRunner(p, sums_device, self.cpu_bf16, cap_threads=self.preprocessing is not None,
                            openvino=self.openvino)
        folds = p.list_of_parameters or [None]  # None: the network's own weights (a trainer's validation)
        sums = LogitSums(len(folds), p.label_manager.num_segmentation_heads, grid.k, sums_device)
        export = SliceExport(plan, self.export_resampling, case.labels, case.probabilities, p.label_manager,
                             self.export_block_bytes, case.body)
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

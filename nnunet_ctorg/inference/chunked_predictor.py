"""Cranio-caudal chunked prediction on top of ``nnUNetPredictor``: peak RAM bounded by the chunk, not the scan.

For each case the CT is cut into overlapping chunks along its cranio-caudal axis (in mm), each
optionally cropped to the body contour in-plane. Every chunk goes through nnU-Net's own
preprocessing (``run_case_npy``), sliding window with TTA over all loaded folds
(``predict_logits_from_preprocessed_data``) and export to the chunk's grid
(``convert_predicted_logits_to_segmentation_with_correct_shape``); the class probabilities of
neighbouring chunks are blended across the overlap (:mod:`nnunet_ctorg.inference.chunks`). No
float array of the whole scan is ever allocated: the CT is kept in its stored integer type and the
labels as uint8.
"""

import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_ctorg.inference.body_crop import BodyCropSettings, body_box, body_contour, image_axes
from nnunet_ctorg.inference.chunks import ChunkStitcher, chunk_layout

# RAM per voxel of a chunk (input copies in nnU-Net's preprocessing, one resampled class channel with
# its float64 temporary, the running maximum and its class) and per voxel and class of an overlap
# (logits of the head and tail, the blend), from nnU-Net 2.8.1 on the CPU
# (benchmarks/chunked_inference.py). Used to choose the chunk length from --max_ram_gb.
BYTES_PER_CHUNK_VOXEL = 32.0
BYTES_PER_OVERLAP_VOXEL_PER_CLASS = 12.0


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
    """Chunk length and overlap in mm.

    ``chunk_mm="auto"``: 300 mm but at least the network's patch plus the overlap; ``None``: from
    ``max_ram_gb``, or the whole scan when that is ``None`` too. Chunks are at least three overlaps long.
    """

    chunk_mm: float | str | None = "auto"
    overlap_mm: float = 50.0
    max_ram_gb: float | None = None

    def __post_init__(self) -> None:
        if self.chunk_mm not in (None, "auto") and not (isinstance(self.chunk_mm, (int, float)) and self.chunk_mm > 0):
            raise ValueError(f"chunk_mm must be > 0, 'auto' or None, got {self.chunk_mm!r}")
        if self.overlap_mm < 0:
            raise ValueError(f"overlap_mm must be >= 0, got {self.overlap_mm}")
        if self.max_ram_gb is not None and self.max_ram_gb <= 0:
            raise ValueError(f"max_ram_gb must be > 0, got {self.max_ram_gb}")
        if isinstance(self.chunk_mm, (int, float)) and self.overlap_mm >= self.chunk_mm:
            raise ValueError(f"overlap_mm ({self.overlap_mm:g}) must be smaller than chunk_mm ({self.chunk_mm:g})")


def chunk_slices_for_budget(max_ram_gb: float, base_gb: float, slice_voxels: int, n_classes: int,
                            overlap_slices: int, volume_bytes: int) -> int:
    """Largest chunk length (slices) whose estimated peak stays within ``max_ram_gb``.

    ``base_gb`` is what the process holds before the case (model, libraries); ``volume_bytes`` the CT
    and label volume of the case. Raises ``ValueError`` when not even a chunk of three overlaps fits.
    """
    per_slice = slice_voxels * BYTES_PER_CHUNK_VOXEL
    overlaps = 2 * overlap_slices * slice_voxels * n_classes * BYTES_PER_OVERLAP_VOXEL_PER_CLASS
    free = max_ram_gb * 1024**3 - base_gb * 1024**3 - volume_bytes - overlaps
    slices = int(free // per_slice)
    needed = max(3 * overlap_slices, 8)
    if slices < needed:  # below three overlaps the layout cannot blend
        need_gb = (base_gb * 1024**3 + volume_bytes + overlaps + needed * per_slice) / 1024**3
        raise ValueError(f"--max_ram_gb {max_ram_gb:g} is too small for this scan: about {need_gb:.1f} GB are needed "
                         f"for chunks of {needed} slices (the model alone holds {base_gb:.1f} GB)")
    return slices


class ChunkedPredictor:
    """Chunked, body-cropped prediction with an initialised ``nnUNetPredictor``.

    Args:
        predictor: ``nnUNetPredictor`` after ``initialize_from_trained_model_folder``.
        chunks: chunk length/overlap/RAM budget.
        body_crop: crop each chunk in-plane to the body contour (``None``: no crop).
    """

    def __init__(self, predictor, chunks: ChunkSettings = ChunkSettings(),
                 body_crop: BodyCropSettings | None = None) -> None:
        self.predictor = predictor
        self.chunks = chunks
        self.body_crop = body_crop
        self.n_classes = len(predictor.label_manager.all_labels)
        if predictor.label_manager.has_regions:
            raise ValueError("region-based models are not supported by the chunked predictor")
        self.preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
        self.base_gb = current_rss_gb()

    def patch_mm(self, axial: int) -> float:
        """Extent in mm of the network's patch along array axis ``axial`` (after the plans' transpose)."""
        cm = self.predictor.configuration_manager
        k = list(self.predictor.plans_manager.transpose_forward).index(axial)
        if len(cm.patch_size) == 2:  # 2-D models see one slice
            return 0.0 if k == 0 else float("inf")
        return float(cm.patch_size[k] * cm.spacing[k])

    def layout_for(self, image, what: str = "image") -> tuple[int, list[tuple[int, int]]]:
        """(array axis of the chunks, chunk ranges) for a SimpleITK image.

        Default chunk: ``chunk_mm``, but at least the network's patch plus the overlap (a shorter
        chunk is padded and the network loses context); an explicit ``chunk_mm`` or a RAM budget may
        go below that, with a warning.
        """
        axial, _ = image_axes(image)
        n = image.GetSize()[::-1][axial]
        spacing = image.GetSpacing()[::-1][axial]
        settings = self.chunks
        overlap = int(np.ceil(settings.overlap_mm / spacing))
        if settings.chunk_mm is None and settings.max_ram_gb is None:
            return axial, [(0, n)]
        recommended = int(np.ceil(self.patch_mm(axial) / spacing)) + overlap
        if settings.chunk_mm is None:
            chunk = n
        elif settings.chunk_mm == "auto":
            chunk = max(int(round(300.0 / spacing)), recommended)
        else:
            chunk = int(round(settings.chunk_mm / spacing))
        if settings.max_ram_gb is not None:
            chunk = min(chunk, self._budget_slices(image, axial, overlap))
        chunk = max(chunk, 3 * overlap, 1)
        if chunk < min(recommended, n):
            warnings.warn(f"{what}: chunks of {chunk * spacing:.0f} mm are shorter than the network's patch plus the "
                          f"overlap ({recommended * spacing:.0f} mm): expect less agreement with whole-image "
                          f"prediction", stacklevel=2)
        return axial, chunk_layout(n, min(chunk, n), overlap, min_length=min(chunk, recommended, n))

    def _budget_slices(self, image, axial: int, overlap: int) -> int:
        shape = image.GetSize()[::-1]
        slice_voxels = int(np.prod(shape)) // shape[axial]
        volume_bytes = int(np.prod(shape)) * (image.GetSizeOfPixelComponent() + 1)
        return chunk_slices_for_budget(self.chunks.max_ram_gb, self.base_gb, slice_voxels, self.n_classes, overlap,
                                       volume_bytes)

    def chunk_logits(self, hu: np.ndarray, spacing: tuple[float, float, float]) -> Iterator[np.ndarray]:
        """Class logits of one (z, y, x) block on its own grid, one class at a time, through nnU-Net's pipeline.

        nnU-Net's preprocessing, sliding window (TTA, all folds) and its probability resampling function
        are used as ``nnUNetPredictor`` uses them; the export is streamed per class, so the block never
        holds C full-size float arrays (nnU-Net's export holds three such arrays).
        """
        import torch

        from nnunet_ctorg.planning.antialiasing import with_antialiasing

        p = self.predictor
        pm, cm = p.plans_manager, p.configuration_manager
        # a configuration planned with anti-aliasing (nnunet_ctorg_plan_and_preprocess) is preprocessed with it
        data, _, props = self.preprocessor.run_case_npy(hu[None].astype(np.float32), None, {"spacing": list(spacing)},
                                                        pm, with_antialiasing(cm), p.dataset_json)
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

    def predict_image(self, image, progress: bool = False, what: str = "image") -> np.ndarray:
        """uint8 labels (array order of ``sitk.GetArrayFromImage``) of a SimpleITK CT image."""
        import SimpleITK as sitk
        from tqdm import tqdm

        axial, layout = self.layout_for(image, what)
        ap = image_axes(image)[1]
        hu = sitk.GetArrayViewFromImage(image)
        spacing = image.GetSpacing()[::-1]
        labels = np.zeros(hu.shape, dtype=np.uint8 if self.n_classes <= 256 else np.uint16)
        blend = int(np.ceil(self.chunks.overlap_mm / spacing[axial]))
        stitcher = ChunkStitcher(labels, layout, self.n_classes, axial, blend=blend)
        found_body = False
        for start, stop in tqdm(layout, desc=f"{what} chunks", unit="chunk", leave=False, disable=not progress):
            index = [slice(None)] * 3
            index[axial] = slice(start, stop)
            block = hu[tuple(index)]
            in_plane = None
            if self.body_crop is not None:
                box = body_box(body_contour(block, spacing, axial, ap, self.body_crop), spacing,
                               self.body_crop.margin_mm)
                if box is None:  # only air and table in this chunk: background
                    shape = (stop - start, 1, 1)
                    stitcher.add_logits((np.full(shape, 0.0 if c == 0 else -1e4, np.float32)
                                         for c in range(self.n_classes)), (slice(0, 1), slice(0, 1)))
                    continue
                found_body = True
                index = [box[a] if a != axial else slice(None) for a in range(3)]
                block = block[tuple(index)]
                in_plane = tuple(box[a] for a in range(3) if a != axial)
            stitcher.add_logits((np.moveaxis(c, axial, 0) for c in self.chunk_logits(block, spacing)), in_plane)
        if self.body_crop is not None and not found_body:
            raise ValueError(f"{what}: no body found (no voxel between {self.body_crop.low_hu:g} and "
                             f"{self.body_crop.high_hu:g} HU in a part of at least "
                             f"{self.body_crop.min_island_mm2:g} mm²); run without --body_crop")
        return labels


def case_inputs(in_dir: Path) -> dict[str, Path]:
    """Case name -> CT file: nnU-Net's ``CASE_0000.nii.gz`` (single channel) or plain ``CASE.nii.gz``."""
    from nnunet_ctorg.io import case_name, list_images

    cases: dict[str, Path] = {}
    for path in list_images(in_dir):
        name = case_name(path)
        if name.endswith(tuple(f"_{i:04d}" for i in range(1, 10))):
            raise ValueError(f"{path.name}: the chunked predictor takes single-channel CT models only "
                             f"(found channel {name[-4:]})")
        cases[name[:-5] if name.endswith("_0000") else name] = path
    return cases


def predict_folder(chunked: ChunkedPredictor, in_dir: str | Path, out_dir: str | Path,
                   continue_prediction: bool = False, num_parts: int = 1, part_id: int = 0,
                   postprocess: bool = False, previews: bool = False, progress: bool = True) -> dict:
    """Predict every CT of ``in_dir`` (the ``part_id``-th of ``num_parts`` shares) into ``out_dir/CASE.nii.gz``."""
    import json

    import SimpleITK as sitk
    from tqdm import tqdm

    from nnunet_ctorg.io import read_ct, write_image_atomic, write_text_atomic

    if not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be in 0..{num_parts - 1}, got {part_id}")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    cases = case_inputs(in_dir)
    if not cases:
        raise ValueError(f"no CT files in {in_dir}")
    names = sorted(cases)[part_id::num_parts]
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_map = chunked.predictor.dataset_json["labels"]
    write_text_atomic(json.dumps(chunked.predictor.dataset_json, indent=2), out_dir / "dataset.json")
    write_text_atomic(json.dumps(chunked.predictor.plans_manager.plans, indent=2), out_dir / "plans.json")
    summary: dict = {"predicted": [], "skipped": [], "failed": {}, "seconds": {}}
    for name in tqdm(names, desc="cases", unit="case", disable=not progress):
        target = out_dir / f"{name}.nii.gz"
        if continue_prediction and target.is_file():
            summary["skipped"].append(name)
            continue
        t = time.perf_counter()
        try:
            image = read_ct(cases[name], name)
            labels = chunked.predict_image(image, progress=progress, what=name)
            if postprocess:
                from nnunet_ctorg.postprocessing.organ_cleanup import clean_segmentation

                labels = clean_segmentation(labels, image.GetSpacing(), labels_map)
            seg = sitk.GetImageFromArray(labels)
            seg.CopyInformation(image)
            write_image_atomic(seg, target)
            if previews:
                from nnunet_ctorg.evaluation.previews import save_preview

                lps = sitk.DICOMOrient(image, "LPS")
                save_preview(sitk.GetArrayViewFromImage(lps), {"prediction": sitk.GetArrayFromImage(
                    sitk.DICOMOrient(seg, "LPS"))}, lps.GetSpacing()[::-1], labels_map,
                    out_dir / "previews" / f"{name}.png", title=name)
        except (ValueError, OSError, RuntimeError) as e:
            summary["failed"][name] = str(e)
            continue
        summary["predicted"].append(name)
        summary["seconds"][name] = round(time.perf_counter() - t, 2)
    summary["peak_rss_gb"] = round(peak_rss_gb(), 3)
    summary["base_rss_gb"] = round(chunked.base_gb, 3)
    write_text_atomic(json.dumps(summary, indent=2), out_dir / f"chunked_prediction_summary_part{part_id}.json")
    return summary


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

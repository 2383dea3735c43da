"""Chunked prediction of a folder of CTs (files or DICOM series), as ``nnUNetv2_predict`` predicts a folder.

Reading a case (slab by slab where the format allows), predicting it with a
:class:`~nnunet_ctorg.inference.chunked_predictor.ChunkedPredictor`, writing its outputs (streamed NIfTI labels,
DICOM SEG, nnU-Net's probabilities), resuming (``--continue_prediction``), sharding (``-num_parts``/``-part_id``)
and the run's summary.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_ctorg.inference.body_crop import image_axes
from nnunet_ctorg.inference.chunk_budgets import peak_rss_gb
from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor


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


@dataclass(frozen=True)
class FolderOptions:
    """The options of :func:`predict_folder` that every case shares."""

    out_dir: Path
    file_ending: str
    endings: tuple[str, ...]  # of the label outputs
    postprocess: bool = False
    previews: bool = False
    progress: bool = True
    output_type: str = "nifti"
    save_probabilities: bool = False

    def targets(self, name: str) -> list[Path]:
        """The files a finished case has (what ``--continue_prediction`` looks for)."""
        files = [self.out_dir / f"{name}{ending}" for ending in self.endings]
        if self.save_probabilities:
            files += [self.out_dir / f"{name}.npz", self.out_dir / f"{name}.pkl"]
        return files


def predict_folder(chunked: ChunkedPredictor, in_dir: str | Path, out_dir: str | Path,
                   continue_prediction: bool = False, num_parts: int = 1, part_id: int = 0, *,
                   postprocess: bool = False, previews: bool = False, progress: bool = True,
                   output_type: str = "nifti", save_probabilities: bool = False) -> dict:
    """Predict every CT of ``in_dir`` (the ``part_id``-th of ``num_parts`` shares) into ``out_dir``.

    Outputs are ``CASE<file_ending>`` with the model's file ending, as ``nnUNetv2_predict`` names them. A folder
    without such files is searched for DICOM series (:mod:`nnunet_ctorg.inference.dicom_series`).
    ``output_type``: ``"nifti"`` (the file ending's format), ``"dicom_seg"`` (``CASE.dcm``, a DICOM SEG that
    references the input series; DICOM input only) or ``"both"``. ``save_probabilities``: also ``CASE.npz`` and
    ``CASE.pkl`` as ``nnUNetv2_predict --save_probabilities`` writes them (:mod:`.probability_export`).
    A case that fails is listed with its error in the summary (``chunked_prediction_summary_part<ID>.json``).
    """
    import json

    from tqdm import tqdm

    from nnunet_ctorg.inference.dicom_seg import SEG_FILE_ENDING
    from nnunet_ctorg.io import write_text_atomic

    if not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be in 0..{num_parts - 1}, got {part_id}")
    if output_type not in ("nifti", "dicom_seg", "both"):
        raise ValueError(f"output_type must be 'nifti', 'dicom_seg' or 'both', got {output_type!r}")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    file_ending = chunked.predictor.dataset_json.get("file_ending", ".nii.gz")
    cases, notes = _folder_cases(in_dir, file_ending, output_type)
    endings = {"nifti": (file_ending,), "dicom_seg": (SEG_FILE_ENDING,), "both": (file_ending, SEG_FILE_ENDING)}
    options = FolderOptions(out_dir, file_ending, endings[output_type], postprocess, previews, progress,
                            output_type, save_probabilities)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(chunked.predictor.dataset_json, indent=2), out_dir / "dataset.json")
    write_text_atomic(json.dumps(chunked.predictor.plans_manager.plans, indent=2), out_dir / "plans.json")
    summary: dict = {"predicted": [], "skipped": [], "failed": {}, "seconds": {}, "estimated_peak_gb": {},
                     "tiles_run": {}, "notes": notes, "body_crop": _body_crop_setting(chunked)}
    for name in tqdm(sorted(cases)[part_id::num_parts], desc="cases", unit="case", disable=not progress):
        if continue_prediction and all(t.is_file() for t in options.targets(name)):
            summary["skipped"].append(name)
            continue
        started = time.perf_counter()
        try:
            _predict_case(chunked, cases[name], name, options)
        except (ValueError, OSError, RuntimeError) as e:
            summary["failed"][name] = str(e)
            continue
        summary["predicted"].append(name)
        summary["seconds"][name] = round(time.perf_counter() - started, 2)
        if chunked.last_estimate_gb is not None:
            summary["estimated_peak_gb"][name] = round(chunked.last_estimate_gb, 3)
        summary["tiles_run"][name] = list(chunked.last_tiles)  # [tiles run, of nnU-Net's whole-scan grid] per fold
    summary["peak_rss_gb"] = round(peak_rss_gb(), 3)
    summary["base_rss_gb"] = round(chunked.base_gb, 3)
    write_text_atomic(json.dumps(summary, indent=2), out_dir / f"chunked_prediction_summary_part{part_id}.json")
    return summary


def _body_crop_setting(chunked: ChunkedPredictor) -> dict | None:
    """What the summary records of the body crop: ``None`` (every tile run), or its margin and tile rule."""
    crop = chunked.body_crop
    if crop is None:
        return None
    return {"margin_mm": crop.margin_mm, "tiles": "mask" if crop.skip_tiles_outside_mask else "box"}


def _folder_cases(in_dir: Path, file_ending: str, output_type: str) -> tuple[dict, list[str]]:
    """Case name -> image file, or (where no file has the model's ending) -> DICOM series; the series' notes."""
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
    return cases, notes


def _predict_case(chunked: ChunkedPredictor, source, name: str, options: FolderOptions) -> None:
    """One case of :func:`predict_folder`: read, predict, write; nothing half-written is left on failure."""
    import SimpleITK as sitk

    image = probabilities = None
    try:
        # previews need the whole CT in memory; otherwise it is read slab by slab where the format allows
        image = read_ct_compact(source, name) if options.previews else read_ct_lazily(source, name, options.out_dir)
        in_memory = getattr(image, "in_memory", True)
        ct_bytes = int(np.prod(image.GetSize())) * (sitk.GetArrayViewFromImage(image).itemsize if in_memory else 0)
        chunked.check_whole_volume_steps(image.GetSize()[::-1], ct_bytes, options.postprocess, options.previews, name)
        if options.save_probabilities:
            from nnunet_ctorg.inference.probability_export import ProbabilityWriter

            heads = chunked.predictor.label_manager.num_segmentation_heads
            probabilities = ProbabilityWriter(options.out_dir / name, heads, image.GetSize()[::-1], options.out_dir)
        if (options.output_type == "nifti" and not options.postprocess and not in_memory
                and options.file_ending in (".nii.gz", ".nii")):  # slab in, slab out
            _predict_streamed(chunked, image, name, options, probabilities)
            return
        labels = chunked.predict_image(image, progress=options.progress, what=name, probabilities=probabilities)
        _close_probabilities(probabilities, image, chunked, options.progress)
        _write_labels(labels, image, source, name, options, chunked.predictor.dataset_json["labels"])
    finally:
        if hasattr(image, "close"):  # a NiftiVolume's temporary file
            image.close()
        if probabilities is not None:  # drops the temporary file of a case that failed; a no-op after close()
            probabilities.abort()


def _predict_streamed(chunked: ChunkedPredictor, image, name: str, options: FolderOptions, probabilities) -> None:
    """Labels written slab by slab into the NIfTI output as the chunks finish them."""
    from nnunet_ctorg.inference.nifti_slabs import NiftiLabelWriter

    writer = NiftiLabelWriter(options.out_dir / f"{name}{options.file_ending}", image.GetSize()[::-1],
                              chunked.label_dtype, image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    try:
        chunked.predict_image(image, progress=options.progress, what=name, out=writer, probabilities=probabilities)
        _close_probabilities(probabilities, image, chunked, options.progress)
    except BaseException:
        writer.abort()
        raise
    writer.close()  # removes the temporary file itself if it fails


def _write_labels(labels: np.ndarray, image, source, name: str, options: FolderOptions, labels_map: dict) -> None:
    """The whole-volume steps after prediction: ``--postprocess``, the outputs, ``--preview``."""
    import SimpleITK as sitk

    from nnunet_ctorg.inference.dicom_seg import SEG_FILE_ENDING, write_dicom_seg
    from nnunet_ctorg.io import write_image_atomic

    if options.postprocess:
        from nnunet_ctorg.postprocessing.organ_cleanup import clean_segmentation

        labels = clean_segmentation(labels, image.GetSpacing(), labels_map)
    if options.output_type != "nifti":
        write_dicom_seg(labels, source.files, labels_map, options.out_dir / f"{name}{SEG_FILE_ENDING}", name)
    seg = sitk.GetImageFromArray(labels)
    seg.SetOrigin(image.GetOrigin())
    seg.SetSpacing(image.GetSpacing())
    seg.SetDirection(image.GetDirection())
    if options.output_type != "dicom_seg":
        write_image_atomic(seg, options.out_dir / f"{name}{options.file_ending}")
    if options.previews:
        from nnunet_ctorg.evaluation.previews import save_preview

        lps = sitk.DICOMOrient(image, "LPS")
        save_preview(sitk.GetArrayViewFromImage(lps), {"prediction": sitk.GetArrayFromImage(
            sitk.DICOMOrient(seg, "LPS"))}, lps.GetSpacing()[::-1], labels_map,
            options.out_dir / "previews" / f"{name}.png", title=name)


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

"""Evaluate a folder of predictions against a folder of references (or a second prediction folder).

Files are paired by case name; every case must be in both folders and share its geometry. Per case
and organ the metrics of :mod:`nnunet_ctorg.evaluation.metrics` are written to
``metrics_per_case.csv``; ``summary.json`` and ``summary.md`` hold mean ± sd per organ. Voxels of
the reference labelled ``ignore`` (nnU-Net's partial-annotation label) are left out.
"""

import csv
import json
import math
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np

from nnunet_ctorg.evaluation.metrics import METRIC_NAMES, label_boxes, organ_metrics, union_box

CSV_NAME, SUMMARY_JSON, SUMMARY_MD = "metrics_per_case.csv", "summary.json", "summary.md"


def read_label_array(path: Path, what: str):
    """SimpleITK image and its integer (z, y, x) array; non-integer or negative labels are errors."""
    import SimpleITK as sitk

    from nnunet_ctorg.io import read_image

    image = read_image(path, what)
    if image.GetDimension() != 3:
        raise ValueError(f"{what}: a 3-D label image is needed, got size {image.GetSize()}")
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(f"{what}: label values must be integers")
        array = array.astype(np.int32)
    if array.size and array.min() < 0:
        raise ValueError(f"{what}: negative label value {array.min()}")
    return image, array


def evaluate_case(ref_path: Path, pred_path: Path, labels: Mapping[str, int], tolerances: Mapping[str, float],
                  threads: int = 1) -> list[dict]:
    """Rows (one per organ of ``tolerances``) of metrics for one case."""
    from nnunet_ctorg.io import case_name, same_geometry

    case = case_name(ref_path)
    ref_img, ref = read_label_array(ref_path, f"{case}: reference")
    pred_img, pred = read_label_array(pred_path, f"{case}: prediction")
    if not same_geometry(ref_img, pred_img):
        raise ValueError(f"{case}: reference and prediction geometry differ (size {ref_img.GetSize()} vs "
                         f"{pred_img.GetSize()}, spacing {np.round(ref_img.GetSpacing(), 4)} vs "
                         f"{np.round(pred_img.GetSpacing(), 4)}, or origin/direction)")
    known = set(labels.values())
    for what, array in (("reference", ref), ("prediction", pred)):
        unknown = sorted(set(np.unique(array).tolist()) - known)
        if unknown:
            raise ValueError(f"{case}: {what} has label values {unknown} that the label map does not know")
    if "ignore" in labels:
        keep = ref != labels["ignore"]
        pred = np.where(keep, pred, 0)
        ref = np.where(keep, ref, 0)
    spacing = ref_img.GetSpacing()[::-1]
    max_label = max(known)
    ref_boxes, pred_boxes = label_boxes(ref, max_label), label_boxes(pred, max_label)
    rows = []
    for organ, tolerance in tolerances.items():
        lab = labels[organ]
        box = union_box(ref_boxes[lab], pred_boxes[lab])
        if box is None:
            metrics = organ_metrics(np.zeros((1,) * 3, bool), np.zeros((1,) * 3, bool), spacing, tolerance)
        else:
            metrics = organ_metrics(ref[box] == lab, pred[box] == lab, spacing, tolerance, threads=threads)
        rows.append({"case": case, "organ": organ, **metrics.as_dict(), "tolerance_mm": tolerance})
    return rows


def _evaluate_pair(pair: tuple[Path, Path], labels: Mapping[str, int], tolerances: Mapping[str, float],
                   threads: int) -> list[dict] | str:
    try:
        return evaluate_case(pair[0], pair[1], labels, tolerances, threads)
    except (ValueError, OSError) as e:
        return str(e)


def pair_cases(ref_dir: Path, pred_dir: Path) -> list[tuple[Path, Path]]:
    """(reference, prediction) files paired by case name; a case missing on either side is an error."""
    from nnunet_ctorg.io import case_name, list_images

    refs = {case_name(p): p for p in list_images(ref_dir, "reference folder")}
    preds = {case_name(p): p for p in list_images(pred_dir, "prediction folder")}
    if not refs:
        raise ValueError(f"no label images in reference folder {ref_dir}")
    missing, extra = sorted(set(refs) - set(preds)), sorted(set(preds) - set(refs))
    if missing:
        raise ValueError(f"case {missing[0]} has no prediction in {pred_dir}" + _more(missing))
    if extra:
        raise ValueError(f"case {extra[0]} of {pred_dir} has no reference in {ref_dir}" + _more(extra))
    return [(refs[c], preds[c]) for c in sorted(refs)]


def _more(cases: list[str]) -> str:
    if len(cases) == 1:
        return ""
    return f" ({len(cases)} cases in all: {', '.join(cases[:5])}{'...' if len(cases) > 5 else ''})"


def label_map_candidates(ref_dir: Path, pred_dir: Path) -> list[Path]:
    """dataset.json next to the predictions (nnU-Net writes one) or of the reference's dataset, in this order."""
    return [pred_dir / "dataset.json", ref_dir / "dataset.json", ref_dir.parent / "dataset.json"]


def summarise(rows: list[dict], organs: list[str]) -> dict:
    """Mean, sd, n and n_undefined (NaN values) per organ and metric, plus the mean over organs."""
    summary: dict = {"organs": {}, "mean_over_organs": {}}
    for organ in organs:
        organ_rows = [r for r in rows if r["organ"] == organ]
        summary["organs"][organ] = {"n_cases": len(organ_rows), "n_both_empty": sum(
            1 for r in organ_rows if r["volume_ref_ml"] == 0 and r["volume_pred_ml"] == 0)}
        for metric in METRIC_NAMES:
            values = np.array([r[metric] for r in organ_rows], dtype=float)
            finite = values[np.isfinite(values)]
            summary["organs"][organ][metric] = {
                "mean": float(finite.mean()) if finite.size else None,
                "sd": float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else None),
                "n": int(finite.size), "n_undefined": int(values.size - finite.size)}
    for metric in METRIC_NAMES:
        means = [summary["organs"][o][metric]["mean"] for o in organs]
        means = [m for m in means if m is not None]
        summary["mean_over_organs"][metric] = float(np.mean(means)) if means else None
    return summary


def markdown_table(summary: dict, tolerances: Mapping[str, float]) -> str:
    def cell(stats: dict, digits: int) -> str:
        if stats["mean"] is None:
            return "undefined"
        text = f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"
        return text + (f" ({stats['n_undefined']} undef.)" if stats["n_undefined"] else "")

    lines = ["| organ | DSC | IoU | NSD (τ mm) | HD95 mm | ASSD mm | volume diff ml |",
             "|---|---|---|---|---|---|---|"]
    for organ, s in summary["organs"].items():
        lines.append(f"| {organ} | {cell(s['dsc'], 3)} | {cell(s['iou'], 3)} | {cell(s['nsd'], 3)} "
                     f"({tolerances[organ]:g}) | {cell(s['hd95'], 2)} | {cell(s['assd'], 2)} | "
                     f"{cell(s['volume_diff_ml'], 1)} |")
    m = summary["mean_over_organs"]

    def fmt(v, d):
        return "-" if v is None else f"{v:.{d}f}"
    lines.append(f"| **mean over organs** | {fmt(m['dsc'], 3)} | {fmt(m['iou'], 3)} | {fmt(m['nsd'], 3)} | "
                 f"{fmt(m['hd95'], 2)} | {fmt(m['assd'], 2)} | {fmt(m['volume_diff_ml'], 1)} |")
    return "\n".join(lines) + "\n"


def resolve_tolerances(labels: Mapping[str, int], organs: list[str] | None, tolerance_mm: float,
                       organ_tolerances: Mapping[str, float] | None) -> dict[str, float]:
    """Organ -> NSD tolerance for the organs to evaluate (all labels but background/ignore by default)."""
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    candidates = [o for o in sorted(labels, key=labels.__getitem__) if o not in ("background", "ignore")]
    organs = candidates if organs is None else list(organs)
    for organ in list(organs) + list(organ_tolerances or {}):
        if organ not in candidates:
            raise ValueError(f"unknown organ {organ!r}; the label map has: {', '.join(candidates)}")
    tolerances = {o: float(tolerance_mm) for o in organs}
    for organ, tol in (organ_tolerances or {}).items():
        if tol < 0:
            raise ValueError(f"tolerance for {organ!r} must be >= 0, got {tol}")
        if organ in tolerances:
            tolerances[organ] = float(tol)
    return tolerances


def evaluate_folders(ref_dir: str | Path, pred_dir: str | Path, out_dir: str | Path,
                     labels: Mapping[str, int] | None = None, organs: list[str] | None = None,
                     tolerance_mm: float = 2.0, organ_tolerances: Mapping[str, float] | None = None,
                     num_processes: int = 1, preview_ct_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Evaluate every case; write the CSV, summary.json and summary.md atomically and return the summary.

    Args:
        labels: organ name -> id; when ``None`` read from ``dataset.json`` (see :func:`label_map_candidates`), or
            without one taken from the ids in the files (``nnunet_ctorg.io.resolve_label_map``).
        organs: organs to evaluate (default: every label but background and ``ignore``).
        tolerance_mm, organ_tolerances: NSD tolerance, default and per organ.
        num_processes: cases evaluated in parallel.
        preview_ct_dir: folder of the CTs (``CASE_0000.nii.gz`` or ``CASE.nii.gz``); writes
            ``previews/CASE.png`` with the reference above the prediction.
    """
    import io as _io

    from nnunet_ctorg.io import resolve_label_map, write_text_atomic
    from nnunet_ctorg.parallel import map_with_progress

    ref_dir, pred_dir, out_dir = Path(ref_dir), Path(pred_dir), Path(out_dir)
    pairs = pair_cases(ref_dir, pred_dir)
    if labels is None:
        labels = resolve_label_map(None, label_map_candidates(ref_dir, pred_dir), [p for pair in pairs for p in pair],
                                   "the reference and predicted files")
    tolerances = resolve_tolerances(labels, organs, tolerance_mm, organ_tolerances)
    threads = 2 if num_processes == 1 else 1
    work = partial(_evaluate_pair, labels=dict(labels), tolerances=tolerances, threads=threads)
    rows, errors = [], []
    for result in map_with_progress(work, pairs, num_processes, "evaluate", "case", progress):
        (errors.append(result) if isinstance(result, str) else rows.extend(result))
    if errors:
        raise ValueError(errors[0] + (f" (and {len(errors) - 1} more cases failed)" if len(errors) > 1 else ""))
    rows.sort(key=lambda r: (r["case"], labels[r["organ"]]))
    summary = summarise(rows, list(tolerances))
    summary.update({"reference": str(ref_dir), "prediction": str(pred_dir), "n_cases": len(pairs),
                    "tolerance_mm": tolerances})
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case", "organ", *METRIC_NAMES, "tolerance_mm"])
    writer.writeheader()
    writer.writerows({k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                     for r in rows)
    write_text_atomic(buffer.getvalue(), out_dir / CSV_NAME)
    write_text_atomic(json.dumps(summary, indent=2), out_dir / SUMMARY_JSON)
    write_text_atomic(f"# Evaluation of {pred_dir} against {ref_dir}\n\n{len(pairs)} cases, mean ± sd.\n\n"
                      + markdown_table(summary, tolerances), out_dir / SUMMARY_MD)
    if preview_ct_dir is not None:
        from nnunet_ctorg.evaluation.previews import preview_folder

        preview_folder(preview_ct_dir, pred_dir, out_dir / "previews", labels, ref_dir=ref_dir,
                       num_processes=num_processes, progress=progress)
    return summary

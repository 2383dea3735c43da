"""PNG previews: axial, coronal and sagittal slices of a CT with coloured labels and a legend."""

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np

WINDOW_HU = (-600.0, 900.0)  # wide enough for lungs, soft tissue and bone in one picture


def label_colours(max_label: int) -> np.ndarray:
    """RGB colour (0..1) per label id; tab20 cycled, background unused."""
    from matplotlib import colormaps

    tab = colormaps["tab20"].colors
    return np.array([(0, 0, 0)] + [tab[(i - 1) % len(tab)] for i in range(1, max_label + 1)], dtype=float)


def _centre(seg: np.ndarray) -> tuple[int, int, int]:
    """Centre of the labelled voxels (or of the volume when nothing is labelled), in (z, y, x)."""
    idx = np.nonzero(seg[::4, ::4, ::4])
    if idx[0].size == 0:
        return tuple(n // 2 for n in seg.shape)
    return tuple(int(np.median(i)) * 4 for i in idx)


def _views(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    z, y, x = centre
    # axial as seen from the feet; coronal and sagittal with the head up
    return [volume[z], volume[::-1, y, :], volume[::-1, :, x]]


def save_preview(ct: np.ndarray, segs: Mapping[str, np.ndarray], spacing: tuple[float, float, float],
                 labels: Mapping[str, int], path: str | Path, title: str = "", alpha: float = 0.45) -> None:
    """Write a PNG with one row per segmentation (e.g. reference and prediction) and a legend.

    ``ct`` in HU and the segmentations are (z, y, x) arrays of one geometry in LPS orientation (x to the
    patient's left, y to posterior, z to superior: radiological display); ``spacing`` in (z, y, x) mm.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from nnunet_ctorg.io import atomic_path

    if ct.ndim != 3:
        raise ValueError(f"preview needs a 3-D CT, got shape {ct.shape}")
    for name, seg in segs.items():
        if seg.shape != ct.shape:
            raise ValueError(f"preview: {name} shape {seg.shape} differs from the CT's {ct.shape}")
    max_label = max(max(labels.values()), *(int(s.max()) for s in segs.values()))
    colours = label_colours(max_label)
    first = next(iter(segs.values()))
    centre = _centre(first)
    sz, sy, sx = spacing
    aspects = [sy / sx, sz / sx, sz / sy]
    ct_views = [np.clip((v - WINDOW_HU[0]) / (WINDOW_HU[1] - WINDOW_HU[0]), 0, 1) for v in _views(ct, centre)]
    legend_rows = -(-len(set(np.unique(np.concatenate([np.unique(v) for v in segs.values()]))) - {0}) // 6)
    legend_h = 0.22 * legend_rows
    fig, axes = plt.subplots(len(segs), 3, figsize=(12, 4.2 * len(segs) + legend_h), squeeze=False)
    present: set[int] = set()
    for row, (name, seg) in enumerate(segs.items()):
        for col, (grey, lab) in enumerate(zip(ct_views, _views(seg, centre))):
            rgb = np.repeat(grey[..., None], 3, axis=-1)
            mask = lab > 0
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colours[lab[mask]]
            present.update(np.unique(lab[mask]).tolist())
            ax = axes[row, col]
            ax.imshow(rgb, aspect=aspects[col], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} - {('axial', 'coronal', 'sagittal')[col]}", fontsize=9)
    names = {v: k for k, v in labels.items()}
    handles = [Patch(color=colours[i], label=names.get(i, str(i))) for i in sorted(present)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 0.96))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def find_ct(ct_dir: Path, case: str) -> Path:
    """``CASE_0000.<ending>`` (nnU-Net) or ``CASE.<ending>`` in ``ct_dir``."""
    from nnunet_ctorg.io import IMAGE_ENDINGS

    for stem in (f"{case}_0000", case):
        for ending in IMAGE_ENDINGS:
            if (ct_dir / f"{stem}{ending}").is_file():
                return ct_dir / f"{stem}{ending}"
    raise FileNotFoundError(f"{case}: no CT {case}_0000.nii.gz or {case}.nii.gz in {ct_dir}")


def preview_case(pred_path: Path, ct_dir: Path, out_dir: Path, labels: Mapping[str, int],
                 ref_dir: Path | None = None, seg_name: str = "prediction") -> None:
    import SimpleITK as sitk

    from nnunet_ctorg.io import case_name, list_images, read_ct, read_image, same_geometry

    case = case_name(pred_path)
    ct_img = read_ct(find_ct(ct_dir, case), f"{case}: CT")
    segs = {}
    lps = partial(sitk.DICOMOrient, desiredCoordinateOrientation="LPS")
    paths = []
    if ref_dir is not None:
        refs = [p for p in list_images(ref_dir, "reference folder") if case_name(p) == case]
        if not refs:
            raise FileNotFoundError(f"{case}: no reference segmentation in {ref_dir}")
        paths.append(("reference", refs[0]))
    for name, path in paths + [(seg_name, pred_path)]:
        img = read_image(path, f"{case}: {name}")
        if not same_geometry(img, ct_img):
            raise ValueError(f"{case}: {name} and CT geometry differ")
        segs[name] = sitk.GetArrayFromImage(lps(img)).astype(np.int32)
    save_preview(sitk.GetArrayFromImage(lps(ct_img)), segs, lps(ct_img).GetSpacing()[::-1], labels,
                 out_dir / f"{case}.png", title=case)


def preview_folder(ct_dir: str | Path, seg_dir: str | Path, out_dir: str | Path, labels: Mapping[str, int],
                   ref_dir: str | Path | None = None, num_processes: int = 1, progress: bool = True,
                   seg_name: str = "prediction") -> None:
    """``out_dir/CASE.png`` for every segmentation in ``seg_dir`` (with the reference row when ``ref_dir``)."""
    from nnunet_ctorg.io import list_images
    from nnunet_ctorg.parallel import map_with_progress

    work = partial(preview_case, ct_dir=Path(ct_dir), out_dir=Path(out_dir), labels=dict(labels),
                   ref_dir=Path(ref_dir) if ref_dir else None, seg_name=seg_name)
    for _ in map_with_progress(work, list_images(seg_dir), num_processes, "previews", "case", progress):
        pass

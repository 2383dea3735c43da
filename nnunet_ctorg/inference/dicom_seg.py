"""Predicted labels as a DICOM Segmentation (SEG) object that references its source CT series (highdicom).

One segment per organ of the model's label map (background and ``ignore`` left out), segment number = label
id, labelled with the organ's name and coded with SNOMED CT where the name is one of the default scheme's
organs (``SEGMENT_CODES``); other names are coded as "Anatomical Structure" and keep their name as label.
The object is BINARY (the type every viewer reads), one frame per slice and segment, empty frames left out,
and references each source slice by its SOPInstanceUID. The source headers are read without pixel data.
"""

import os
from pathlib import Path

import numpy as np

# organ name -> (segmented property category, segmented property type) as pydicom's codes.SCT keywords
SEGMENT_CODES: dict[str, tuple[str, str]] = {
    "liver": ("AnatomicalStructure", "Liver"),
    "bladder": ("AnatomicalStructure", "UrinaryBladderStructure"),
    "lungs": ("AnatomicalStructure", "Lung"),
    "kidneys": ("AnatomicalStructure", "Kidney"),
    "bone": ("Tissue", "Bone"),
    "brain": ("AnatomicalStructure", "Brain"),
    "spleen": ("AnatomicalStructure", "Spleen"),
    "pancreas": ("AnatomicalStructure", "Pancreas"),
}
SEG_FILE_ENDING = ".dcm"


def segment_descriptions(label_map: dict[str, int]) -> list:
    """highdicom ``SegmentDescription`` of each label but background and ``ignore``, in id order (1, 2, ...)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from nnunet_ctorg import __version__

    organs = sorted(((i, n) for n, i in label_map.items() if n not in ("background", "ignore")))
    if [i for i, _ in organs] != list(range(1, len(organs) + 1)):
        raise ValueError(f"DICOM SEG needs label ids 1..N, got {[i for i, _ in organs]}")
    algorithm = hd.AlgorithmIdentificationSequence(name="nnunet-ctorg", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, name in organs:
        category, kind = SEGMENT_CODES.get(name, ("AnatomicalStructure", "AnatomicalStructure"))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=getattr(codes.SCT, category),
            segmented_property_type=getattr(codes.SCT, kind),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
    return descriptions


def write_dicom_seg(labels: np.ndarray, files: list[Path], label_map: dict[str, int], path: str | os.PathLike,
                    what: str) -> None:
    """Write ``labels`` ((z, y, x), z in the order of ``files``, the series' slices) as a DICOM SEG at ``path``.

    Written under a temporary name and renamed; ``ValueError`` naming ``what`` when the source headers lack what
    a SEG must reference (e.g. FrameOfReferenceUID).
    """
    import highdicom as hd
    import pydicom

    from nnunet_ctorg import __version__
    from nnunet_ctorg.io import atomic_path

    if labels.shape[0] != len(files):
        raise ValueError(f"{what}: {labels.shape[0]} label slices for {len(files)} DICOM files")
    descriptions = segment_descriptions(label_map)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    if (labels.shape[1], labels.shape[2]) != (sources[0].Rows, sources[0].Columns):
        raise ValueError(f"{what}: labels of {labels.shape[1:]} pixels for slices of "
                         f"{(sources[0].Rows, sources[0].Columns)}")
    missing = [tag for tag in ("FrameOfReferenceUID", "StudyInstanceUID", "SOPInstanceUID")
               if not sources[0].get(tag)]
    if missing:
        raise ValueError(f"{what}: cannot write a DICOM SEG, the source series has no {', '.join(missing)}")
    if labels.size and labels.max() > len(descriptions):
        raise ValueError(f"{what}: label {labels.max()} has no segment (label map: {len(descriptions)} organs)")
    if not sources[0].get("SliceThickness"):  # type 2 (may be empty) in CT images, required in a SEG
        orientation = np.array(sources[0].ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        depth = [float(np.array(ds.ImagePositionPatient, float) @ normal) for ds in (sources[0], sources[-1])]
        for ds in sources:  # the headers in memory, not the files
            ds.SliceThickness = round(abs(depth[1] - depth[0]) / max(len(sources) - 1, 1), 6)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9000,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nnunet-ctorg",
            manufacturer_model_name="nnunet_ctorg_predict_chunked", software_versions=__version__,
            device_serial_number="none", content_label="ORGANS", content_description="nnU-Net organ segmentation",
            content_creator_name="nnunet-ctorg^", series_description="nnunet-ctorg organs",
            omit_empty_frames=True)
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{what}: cannot write a DICOM SEG: {e}") from e
    with atomic_path(path) as tmp:
        seg.save_as(tmp)

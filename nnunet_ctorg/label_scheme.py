"""Unified organ label schemes and their mapping from each source dataset.

A scheme is a JSON file (``nnunet_ctorg_convert_* --scheme FILE``)::

    {
      "labels": {"background": 0, "liver": 1, "kidneys": 2},
      "sources": {
        "ctorg":       {"liver": [1], "kidneys": [4]},
        "abdomenct1k": {"liver": [1], "kidneys": [2]},
        "totalseg":    {"liver": ["liver"], "kidneys": ["kidney_left", "kidney_right", "kidney_cyst_*"]}
      },
      "partial": {"totalseg": ["bone"]}
    }

``labels`` are the unified ids (0 = background, consecutive). ``sources`` give, per source
and organ, the source's label ids (CT-ORG, AbdomenCT-1K) or TotalSegmentator structure
names, where ``*`` and ``?`` match as in shell patterns. An organ a source does not list is
not annotated by that source. Structure names are those of TotalSegmentator v1 or v2
(``nnunet_ctorg.labels``); a pattern only matches the masks a download has. ``partial`` (optional)
lists, per source, organs the source annotates only in part (e.g. TotalSegmentator's bone has no
forearm, hand, lower-leg or foot bones); the merge's ``ignore`` strategy then puts the ignore
label on the unlabelled voxels that could belong to them (see ``merge.py``). CT-ORG's entry
applies to its training cases only (its test cases were corrected by hand). Where
TotalSegmentator structures of different organs overlap, the organ with the higher unified id wins
(documented, deterministic).
"""

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_ctorg.labels import DEFAULT_LABELS, TOTALSEG_ALL_STRUCTURES, TOTALSEG_V2_STRUCTURES

SOURCES = ("ctorg", "totalseg", "abdomenct1k")

_BONES = ["sacrum", "vertebrae_*", "rib_left_*", "rib_right_*", "humerus_*", "scapula_*", "clavicula_*",
          "femur_*", "hip_*", "skull", "sternum"]

DEFAULT_SCHEME: dict = {
    "labels": DEFAULT_LABELS,
    "sources": {
        "ctorg": {"liver": [1], "bladder": [2], "lungs": [3], "kidneys": [4], "bone": [5], "brain": [6]},
        "abdomenct1k": {"liver": [1], "kidneys": [2], "spleen": [3], "pancreas": [4]},
        "totalseg": {
            "liver": ["liver"], "bladder": ["urinary_bladder"], "lungs": ["lung_*"],
            "kidneys": ["kidney_left", "kidney_right", "kidney_cyst_left", "kidney_cyst_right"],
            "bone": _BONES, "brain": ["brain"], "spleen": ["spleen"], "pancreas": ["pancreas"],
        },
    },
    # TotalSegmentator's bone lacks the appendicular bones below elbow and knee (a separate task) and, in
    # v1, skull and sternum; CT-ORG's training bone is morphology output without the ribs of abdominal
    # scans (paper 000, "Morphological detection and segmentation of CT bones").
    "partial": {"totalseg": ["bone"], "ctorg": ["bone"]},
}


@dataclass(frozen=True)
class LabelScheme:
    """A validated label scheme; see the module docstring for the file format."""

    labels: dict[str, int]
    sources: dict[str, dict[str, list]]
    partial: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: dict, origin: str = "scheme") -> "LabelScheme":
        if not isinstance(spec, dict) or "labels" not in spec or "sources" not in spec:
            raise ValueError(f"{origin}: a scheme needs the keys 'labels' and 'sources'")
        labels = {str(k): int(v) for k, v in spec["labels"].items()}
        if labels.get("background") != 0:
            raise ValueError(f"{origin}: 'labels' must map 'background' to 0")
        if sorted(labels.values()) != list(range(len(labels))):
            raise ValueError(f"{origin}: label ids must be 0..{len(labels) - 1} without gaps, got "
                             f"{sorted(labels.values())}")
        sources = {}
        for source, organs in spec["sources"].items():
            if source not in SOURCES:
                raise ValueError(f"{origin}: unknown source {source!r}; known: {', '.join(SOURCES)}")
            for organ, values in organs.items():
                if organ not in labels or organ == "background":
                    raise ValueError(f"{origin}: source {source!r} maps to unknown organ {organ!r}")
                if source == "totalseg":
                    for pattern in values:
                        if not fnmatch.filter(TOTALSEG_ALL_STRUCTURES, pattern):
                            raise ValueError(f"{origin}: unknown TotalSegmentator structure name {pattern!r} "
                                             f"(organ {organ!r})")
                elif not all(isinstance(v, int) and v > 0 for v in values):
                    raise ValueError(f"{origin}: source {source!r}, organ {organ!r}: label ids must be positive "
                                     f"integers, got {values!r}")
            sources[source] = {organ: list(values) for organ, values in organs.items()}
        partial = spec.get("partial", {})
        if not isinstance(partial, dict):
            raise ValueError(f"{origin}: 'partial' must map a source to a list of organs, got {partial!r}")
        for source, organs in partial.items():
            unknown = [o for o in organs if o not in sources.get(source, {})]
            if source not in SOURCES or unknown:
                raise ValueError(f"{origin}: 'partial' names {source!r}: {unknown or organs}, which that source "
                                 f"does not map in 'sources'")
        return cls(labels=labels, sources=sources, partial={k: list(v) for k, v in partial.items()})

    @classmethod
    def load(cls, path: str | Path | None) -> "LabelScheme":
        """The scheme in a JSON file, or the default scheme for ``None``."""
        if path is None:
            return cls.from_dict(DEFAULT_SCHEME, "default scheme")
        from nnunet_ctorg.io import read_json

        return cls.from_dict(read_json(path, "scheme file"), str(path))

    def organs_of(self, source: str) -> list[str]:
        """Organs (unified names) that ``source`` annotates, in id order."""
        mapped = self.sources.get(source, {})
        return sorted(mapped, key=self.labels.__getitem__)

    def lookup_table(self, source: str, max_source_label: int) -> np.ndarray:
        """Array mapping a CT-ORG or AbdomenCT-1K label id to the unified id (unlisted ids -> 0)."""
        lut = np.zeros(max_source_label + 1, dtype=np.uint8)
        for organ, ids in self.sources.get(source, {}).items():
            for i in ids:
                if i <= max_source_label:
                    lut[i] = self.labels[organ]
        return lut

    def totalseg_lookup_table(self) -> np.ndarray:
        """Array mapping a TotalSegmentator v2 id (1..117, 0 = none) to the unified id (higher id wins)."""
        lut = np.zeros(len(TOTALSEG_V2_STRUCTURES) + 1, dtype=np.uint8)
        for organ in self.organs_of("totalseg"):
            for name in self.totalseg_structures(organ, TOTALSEG_V2_STRUCTURES):
                lut[TOTALSEG_V2_STRUCTURES.index(name) + 1] = self.labels[organ]
        return lut

    def partial_ids(self, source: str) -> list[int]:
        """Unified ids of the organs ``source`` annotates only in part."""
        return sorted(self.labels[o] for o in self.partial.get(source, []))

    def totalseg_structures(self, organ: str, available: list[str] | tuple[str, ...] = TOTALSEG_ALL_STRUCTURES
                            ) -> list[str]:
        """TotalSegmentator structures of ``organ`` among ``available`` names."""
        names: list[str] = []
        for pattern in self.sources.get("totalseg", {}).get(organ, []):
            names += [n for n in fnmatch.filter(available, pattern) if n not in names]
        return names

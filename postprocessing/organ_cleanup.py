"""Organ-aware connected-component cleanup and hole filling of predicted label maps.

Each organ follows one :class:`OrganRule`, looked up by its name in the label scheme:

===============================================  ==============  ================  ==========
organ (scheme names)                             max components  min island (mm³)  fill holes
===============================================  ==============  ================  ==========
liver, spleen, pancreas, brain, bladder,         1               0                 yes
urinary_bladder, gallbladder, stomach,
aorta, esophagus, heart
lungs, kidneys, adrenal_glands, femurs, hips,    2               0                 yes
clavicles
bone, ribs, vertebrae                            all             100               no
colon, small_bowel, anything else                all             0                 no
===============================================  ==============  ================  ==========

Components are 26-connected. Voxels removed from an organ become background; holes (3-D cavities
fully enclosed by the organ) are filled only where the cavity is background, never over another
organ. Bone keeps its holes: the skull encloses the brain and its CSF, which must not become bone.
Override any row with a JSON file ``{"organ": {"max_components": 1, "min_island_mm3": 50,
"fill_holes": true}}``.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class OrganRule:
    """Cleanup of one organ: keep the ``max_components`` largest components (``None`` = all), drop components
    smaller than ``min_island_mm3``, fill enclosed holes when ``fill_holes``."""

    max_components: int | None = None
    min_island_mm3: float = 0.0
    fill_holes: bool = False

    def __post_init__(self) -> None:
        if self.max_components is not None and (not isinstance(self.max_components, int) or self.max_components < 1):
            raise ValueError(f"max_components must be a positive integer or None, got {self.max_components!r}")
        if self.min_island_mm3 < 0:
            raise ValueError(f"min_island_mm3 must be >= 0, got {self.min_island_mm3!r}")


_SINGLE = OrganRule(max_components=1, fill_holes=True)
_PAIRED = OrganRule(max_components=2, fill_holes=True)
_BONE = OrganRule(min_island_mm3=100.0)

ORGAN_RULES: dict[str, OrganRule] = {
    **{name: _SINGLE for name in ("liver", "spleen", "pancreas", "brain", "bladder", "urinary_bladder",
                                  "gallbladder", "stomach", "aorta", "esophagus", "heart")},
    **{name: _PAIRED for name in ("lungs", "kidneys", "adrenal_glands", "femurs", "hips", "clavicles")},
    **{name: _BONE for name in ("bone", "ribs", "vertebrae")},
}
DEFAULT_RULE = OrganRule()


def rules_for_labels(labels: Mapping[str, int], overrides: Mapping[str, Mapping] | None = None
                     ) -> dict[str, OrganRule]:
    """The rule of every organ of a label map (background and ``ignore`` left out), with overrides applied."""
    organs = [name for name in labels if name not in ("background", "ignore")]
    rules = {name: ORGAN_RULES.get(name, DEFAULT_RULE) for name in organs}
    for name, fields in (overrides or {}).items():
        if name not in rules:
            raise ValueError(f"rule override for unknown organ {name!r}; the label map has: {', '.join(organs)}")
        unknown = set(fields) - {"max_components", "min_island_mm3", "fill_holes"}
        if unknown:
            raise ValueError(f"rule override for {name!r}: unknown fields {sorted(unknown)}")
        rules[name] = replace(rules[name], **fields)
    return rules


def load_rule_overrides(path: str | Path) -> dict[str, dict]:
    from nnunet_ctorg.io import read_json

    spec = read_json(path, "rules file")
    if not isinstance(spec, dict) or not all(isinstance(v, dict) for v in spec.values()):
        raise ValueError(f"rules file {path}: expected {{organ: {{field: value}}}}")
    return spec


def _keep_components(mask: np.ndarray, rule: OrganRule, voxel_mm3: float) -> np.ndarray:
    import cc3d

    if rule.min_island_mm3 > 0:
        mask = cc3d.dust(mask, threshold=int(np.ceil(rule.min_island_mm3 / voxel_mm3)), connectivity=26)
    if rule.max_components is not None:
        mask = cc3d.largest_k(mask, k=rule.max_components, connectivity=26) > 0
    return mask


def clean_segmentation(seg: np.ndarray, spacing: tuple[float, float, float], labels: Mapping[str, int],
                       rules: Mapping[str, OrganRule] | None = None) -> np.ndarray:
    """A cleaned copy of a (z, y, x) label map; ``spacing`` in mm (any axis order, only the product counts)."""
    import fill_voids
    from scipy import ndimage

    rules = rules_for_labels(labels) if rules is None else rules
    voxel_mm3 = float(np.prod(spacing))
    out = seg.copy()
    max_label = max(labels.values())
    boxes = ndimage.find_objects(out, max_label=max_label)  # uint8/uint16 as they are: no int32 copy
    for organ, rule in rules.items():
        lab = labels[organ]
        box = boxes[lab - 1] if lab - 1 < len(boxes) else None
        if box is None or (rule.max_components is None and rule.min_island_mm3 == 0):
            continue
        crop = out[box]
        mask = crop == lab
        kept = _keep_components(mask, rule, voxel_mm3)
        crop[mask & ~kept] = 0
    boxes = ndimage.find_objects(out, max_label=max_label)  # uint8/uint16 as they are: no int32 copy
    for organ, rule in rules.items():
        lab = labels[organ]
        box = boxes[lab - 1] if lab - 1 < len(boxes) else None
        if box is None or not rule.fill_holes:
            continue
        crop = out[box]
        mask = crop == lab
        filled = fill_voids.fill(mask, in_place=False)
        crop[filled & (crop == 0)] = lab
    return out

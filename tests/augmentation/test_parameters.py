"""``AugmentationParameters``: every default is nnU-Net's (read from its own transforms) or a named departure,
and the validation's bounds."""

import dataclasses
import math

import pytest

from nnunet_ctorg.augmentation import AugmentationParameters
from tests.augmentation.nnunet_reference import ISOTROPIC_PATCH, nnunet_plan, nnunet_values

# fields nnU-Net has no counterpart for: (our default, why)
DEPARTURES: dict[str, tuple[object, str]] = {
    "rotation_deg": (None, "None takes the plan's range, nnU-Net's per configuration (test_pipeline compares it)"),
    "p_shear": (0.0, "nnU-Net has no shear; off so that 36 % of examples are warped, as in nnU-Net"),
    "shear": (0.1, "the shear range, used only when p_shear > 0 (the paper publishes none)"),
    "affine_noise": (0.0, "the paper's generic affine noise, not in nnU-Net: off"),
    "p_reflection": (0.0, "p_mirror (nnU-Net's mirroring) already reflects: off"),
    "displacement_vox": (0.0, "the loader's random crop already translates, as in nnU-Net: off"),
    "p_occlusion": (0.2, "the paper's slab occlusion, not in nnU-Net"),
    "occlusion_max_fraction": (0.33, "the paper's slab occlusion, not in nnU-Net"),
    "p_window": (0.2, "the paper's random HU window, not in nnU-Net"),
    "window_lower_hu": ((-1000.0, -150.0), "the paper's lung/bone and abdominal windows bound the lower limit"),
    "window_upper_hu": ((230.0, 1500.0), "the paper's lung/bone and abdominal windows bound the upper limit"),
}
MEASURED = {"p_mirror": 0.02}  # nnU-Net hard-codes it in MirrorTransform.get_parameters: measured from its draws


def test_every_default_is_nnunets_or_a_named_departure():
    """``noise_sigma_max`` is nnU-Net's "noise_variance" bound: GaussianNoiseTransform uses it as the standard
    deviation (test_transforms checks that); ``label_interpolation`` "linear" is its ``mode_seg`` "bilinear"."""
    reference = nnunet_values(nnunet_plan(ISOTROPIC_PATCH))
    defaults = AugmentationParameters()
    names = [f.name for f in dataclasses.fields(AugmentationParameters)]
    unclassified = [n for n in names if n not in DEPARTURES and n not in reference]
    assert not unclassified, f"fields neither nnU-Net's nor a named departure: {unclassified}"
    assert not set(DEPARTURES) & set(reference), "a departure that nnU-Net has a value for"
    for name in names:
        ours = getattr(defaults, name)
        if name in DEPARTURES:
            assert ours == DEPARTURES[name][0], (name, ours, DEPARTURES[name])
        elif name in MEASURED:
            assert ours == pytest.approx(reference[name], abs=MEASURED[name]), (name, ours, reference[name])
        else:
            assert ours == reference[name], (name, ours, reference[name])


def test_nnunets_values_are_read_from_its_objects_not_retyped():
    """The reference itself: the values nnU-Net 2.8.1's trainer builds (a change of nnU-Net shows up here)."""
    reference = nnunet_values(nnunet_plan(ISOTROPIC_PATCH))
    assert reference["p_rotation"] == 0.2 and reference["rotation"] == pytest.approx(math.radians(30))
    assert reference["p_scaling"] == 0.2 and reference["scaling"] == (0.7, 1.4) and reference["isotropic_scaling"]
    assert (reference["p_noise"], reference["noise_sigma_max"]) == (0.1, 0.1)
    assert (reference["p_blur"], reference["blur_sigma"], reference["blur.p_per_channel"]) == (0.2, (0.5, 1.0), 0.5)
    assert (reference["p_brightness"], reference["brightness"]) == (0.15, (0.75, 1.25))
    assert (reference["p_contrast"], reference["contrast"]) == (0.15, (0.75, 1.25))
    assert (reference["p_low_resolution"], reference["low_resolution_scale"]) == (0.25, (0.5, 1.0))
    assert (reference["p_gamma_inverted"], reference["p_gamma"], reference["gamma"]) == (0.1, 0.3, (0.7, 1.5))
    assert reference["mirror_axes"] == (0, 1, 2) and reference["p_mirror"] == pytest.approx(0.5, abs=0.02)


def test_disabled_sets_every_probability_to_zero_and_keeps_the_ranges():
    disabled, defaults = AugmentationParameters.disabled(), AugmentationParameters()
    for f in dataclasses.fields(AugmentationParameters):
        expected = 0.0 if f.name.startswith("p_") else getattr(defaults, f.name)
        assert getattr(disabled, f.name) == expected, f.name
    changed = defaults.with_probabilities(p_rotation=1.0, p_gamma=0.0)
    assert (changed.p_rotation, changed.p_gamma, changed.p_scaling) == (1.0, 0.0, defaults.p_scaling)
    assert defaults.p_rotation == 0.2  # a copy


@pytest.mark.parametrize("good", [
    {"p_rotation": 0.0}, {"p_rotation": 1.0}, {"scaling": (1.0, 1.0)}, {"shear": 0.0}, {"affine_noise": 0.0},
    {"displacement_vox": 0.0}, {"noise_sigma_max": 0.0}, {"occlusion_max_fraction": 0.0},
    {"occlusion_max_fraction": 1.0}, {"rotation_deg": 0.0}, {"rotation_deg": None}, {"blur_sigma": (0.0, 1.0)},
    {"scaling": (1e-3, 1.0)}, {"gamma": (1e-3, 1.0)}, {"low_resolution_scale": (1e-3, 1.0)},
    {"label_interpolation": "nearest"}, {"window_lower_hu": (-1000.0, 229.0)},
], ids=lambda d: next(iter(d)) + "=" + str(next(iter(d.values()))))
def test_values_on_the_bounds_are_accepted(good):
    assert getattr(AugmentationParameters(**good), next(iter(good))) == next(iter(good.values()))


@pytest.mark.parametrize("bad", [
    {"p_rotation": -0.01}, {"p_mirror": 1.01}, {"scaling": (0.7, 1.4, 2.0)}, {"contrast": (1.25, 0.75)},
    {"shear": -0.1}, {"affine_noise": -0.1}, {"displacement_vox": -1.0}, {"noise_sigma_max": -0.1},
    {"occlusion_max_fraction": -0.01}, {"occlusion_max_fraction": 1.01}, {"rotation_deg": -1.0},
    {"scaling": (0.0, 1.4)}, {"blur_sigma": (-0.1, 1.0)}, {"gamma": (0.0, 1.5)},
    {"low_resolution_scale": (0.0, 1.0)}, {"label_interpolation": "cubic"}, {"window_lower_hu": (-1000.0, 230.0)},
], ids=lambda d: next(iter(d)) + "=" + str(next(iter(d.values()))))
def test_values_past_the_bounds_are_refused_naming_the_field(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name.split("_hu")[0].replace("window_lower", "window")):
        AugmentationParameters(**bad)


def test_parameters_are_immutable_and_hashable():
    """Trainers share one default instance: a field set on it would change every later trainer's augmentation."""
    params = AugmentationParameters()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.p_rotation = 0.0
    assert hash(params) == hash(AugmentationParameters())


def test_every_exported_name_exists():
    import nnunet_ctorg.augmentation as augmentation

    assert augmentation.__all__ and all(hasattr(augmentation, name) for name in augmentation.__all__)

"""The augmentation picture script on the real CT."""

import pytest

from nnunet_ctorg.augmentation import gallery


def test_gallery_writes_a_png_of_the_real_ct(real_ct_dir, tmp_path):
    out = tmp_path / "aug.png"
    gallery.main(["--ct", str(real_ct_dir / "example_ct_sm.nii.gz"), "--seg", str(real_ct_dir / "example_seg.nii.gz"),
                  "-o", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".tmp-*"))


def test_gallery_refuses_a_label_image_of_another_size(real_ct_dir, tmp_path):
    with pytest.raises(SystemExit, match="size"):
        gallery.main(["--ct", str(real_ct_dir / "example_ct.nii.gz"), "--seg", str(real_ct_dir / "example_seg.nii.gz"),
                      "-o", str(tmp_path / "x.png")])


def test_gallery_augments_eight_copies_of_the_ct_with_its_statistics(real_ct_dir, tmp_path, monkeypatch):
    """What the picture shows: rotation and scaling forced on, every other operation at 0.5, the CT's own
    statistics over the labelled voxels (mean, std, 0.5th percentile), eight examples, seed 0 by default."""
    import numpy as np
    import SimpleITK as sitk

    import nnunet_ctorg.augmentation as augmentation

    calls = []
    build = augmentation.build_device_augmentation

    def recording(parameters, patch_size, statistics, **kwargs):
        calls.append((parameters, tuple(patch_size), statistics, kwargs))
        pipeline = build(parameters, patch_size, statistics, **kwargs)

        def call(image, labels):
            calls.append((tuple(image.shape), tuple(labels.shape)))
            return pipeline(image, labels)

        return call

    monkeypatch.setattr(augmentation, "build_device_augmentation", recording)
    ct_path, seg_path = real_ct_dir / "example_ct_sm.nii.gz", real_ct_dir / "example_seg.nii.gz"
    gallery.main(["--ct", str(ct_path), "--seg", str(seg_path), "-o", str(tmp_path / "aug.png")])
    (parameters, patch, statistics, kwargs), (image_shape, labels_shape) = calls
    ct = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(ct_path)), "LPS")).astype(np.float32)
    seg = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(seg_path)), "LPS"))
    body = ct[seg > 0]
    assert patch == ct.shape and image_shape == labels_shape == (8, 1, *ct.shape) and kwargs == {"seed": 0}
    assert statistics == [pytest.approx((body.mean(), body.std(), np.percentile(body, 0.5)), rel=1e-5)]
    probabilities = {name: value for name, value in vars(parameters).items() if name.startswith("p_")}
    assert probabilities == {**{name: 0.5 for name in probabilities}, "p_rotation": 1.0, "p_scaling": 1.0}
    args = gallery.parse_args(["--ct", "a", "--seg", "b", "-o", "c"])
    assert (args.seed, args.slice) == (0, None)
    with pytest.raises(SystemExit):
        gallery.parse_args(["--seg", "b", "-o", "c"])


def test_gallery_shows_hu_back_from_the_z_scores_it_augments(real_ct_dir, tmp_path, monkeypatch):
    """The pipeline gets (max(CT, lower) - mean) / std; the panels show its output back in HU (an identity
    pipeline here, so every augmented panel is the clipped slice) with the slice's labels."""
    import matplotlib.axes
    import numpy as np
    import SimpleITK as sitk

    import nnunet_ctorg.augmentation as augmentation
    from nnunet_ctorg.evaluation.previews import label_colours

    inputs, shown = [], []

    def identity(parameters, patch_size, statistics, **kwargs):
        def call(image, labels):
            inputs.append((image.clone(), statistics[0]))
            return image, labels
        return call

    def record(ax, data, **kwargs):
        shown.append(np.array(data))

    monkeypatch.setattr(augmentation, "build_device_augmentation", identity)
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", record)
    ct_path, seg_path = real_ct_dir / "example_ct_sm.nii.gz", real_ct_dir / "example_seg.nii.gz"
    gallery.main(["--ct", str(ct_path), "--seg", str(seg_path), "-o", str(tmp_path / "aug.png"), "--slice", "20"])
    ct = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(ct_path)), "LPS")).astype(np.float32)
    seg = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(seg_path)), "LPS"))
    ((image, (mean, std, lower)),) = inputs
    clipped = np.maximum(ct, lower)
    np.testing.assert_allclose(image[:, 0].numpy(), np.broadcast_to((clipped - mean) / std, image[:, 0].shape),
                               rtol=1e-5, atol=1e-5)
    grey, overlays = shown[0::2], shown[1::2]
    assert len(grey) == 9 and len(overlays) == 9 and lower > -1000
    for panel in grey:
        np.testing.assert_allclose(panel, clipped[20], atol=1e-2)
    colours = label_colours(int(seg.max()))
    for overlay in overlays:
        np.testing.assert_array_equal(overlay[..., 3] > 0, seg[20] > 0)
        np.testing.assert_array_equal(overlay[seg[20] > 0, :3], colours[seg[20][seg[20] > 0]])

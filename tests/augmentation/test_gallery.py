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

"""Trainer discovery, picklability, signatures, the deep-supervision loss, and a real CPU run."""

import importlib
import inspect
import json
import math
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ctorg.augmentation import AugmentationParameters, augmentation_crop_size
from nnunet_ctorg.training import trainers as ours
from nnunet_ctorg.training.loss import SoftIoULoss
from tests.conftest import nnunet_command
from tests.training.trainer_setup import make_trainer, training_transforms

USER_MODULE = "nnunet_ctorg.training.trainers"
DEMO_MODULE = "nnunet_ctorg.training.variants.demo_budgets"
CANDIDATE_MODULE = "nnunet_ctorg.training.variants.reliability_candidates"
BOUNDED_MODULE = "nnunet_ctorg.training.bounded_variants"
PACKAGE_MODULES = (USER_MODULE, DEMO_MODULE, CANDIDATE_MODULE)
# every trainer nnU-Net's -tr finds in our folder, and the module that defines it
SELECTABLE = {
    "CTOrgIOUTrainer": USER_MODULE, "CTOrgIOUCETrainer": USER_MODULE, "CTOrgIOUTrainer_plainIOU": USER_MODULE,
    "CTOrgIOUTrainer_nnUNetDA": USER_MODULE, "CTOrgIOUTrainer_NoDA": USER_MODULE,
    "CTOrgIOUTrainer_5epochs": USER_MODULE, "CTOrgIOUTrainer_tiny": USER_MODULE,
    "CTOrgIOUTrainer_demo": DEMO_MODULE, "CTOrgIOUTrainer_demo3x": DEMO_MODULE,
    "nnUNetTrainer_CTOrgDemo": DEMO_MODULE, "nnUNetTrainer_CTOrgDemo3x": DEMO_MODULE,
    "CTOrgIOUTrainer_plainIOU_demo": CANDIDATE_MODULE, "CTOrgIOUCETrainer_demo": CANDIDATE_MODULE,
    "CTOrgIOUTrainer_batchIOU_demo": CANDIDATE_MODULE, "CTOrgIOUTrainer_batchIOU_CEwarmup_demo": CANDIDATE_MODULE,
    "CTOrgIOUTrainer_batchLogIOU_demo": CANDIDATE_MODULE,
    "CTOrgIOUTrainer_batchLogIOU_skipAbsent_demo": CANDIDATE_MODULE,
}
# bases for writing trainers, deliberately not offered to -tr
BASES = {"SeededTraining": USER_MODULE, "DemoBudget": DEMO_MODULE}
TRAINER_NAMES = list(SELECTABLE)


def _defined_trainers() -> dict[str, type]:
    """Every nnU-Net trainer class defined in the package's trainer modules."""
    found = {}
    for module in map(importlib.import_module, PACKAGE_MODULES):
        for name, cls in vars(module).items():
            if isinstance(cls, type) and issubclass(cls, nnUNetTrainer) and cls.__module__ == module.__name__:
                found[name] = cls
    return found


def test_every_trainer_of_the_package_is_selectable_or_a_declared_base():
    assert set(_defined_trainers()) == set(SELECTABLE) | set(BASES)


@pytest.mark.parametrize("name, module", [*SELECTABLE.items(), *BASES.items(),
                                          ("nnUNetTrainer_BoundedVal", BOUNDED_MODULE),
                                          ("nnUNetTrainerNoMirroring_BoundedVal", BOUNDED_MODULE)])
def test_nnunet_finds_the_installed_class_through_ext_trainer(name, module, nnunet_env):
    """nnU-Net's own ``-tr`` lookup over ``nnUNet_extTrainer`` finds each trainer by name: the class of the
    installed package (so that pickles name a stable module), never a copy made by importing the folder."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    if name in BASES:
        with pytest.raises(RuntimeError, match="Could not find"):
            recursive_find_trainer_class_by_name(name)
        return
    cls = recursive_find_trainer_class_by_name(name)
    assert cls is getattr(importlib.import_module(module), name)
    assert cls.__module__ == module and cls.__name__ == name
    assert pickle.loads(pickle.dumps(cls)) is cls


def test_without_ext_trainer_nnunet_does_not_find_them(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(RuntimeError, match="Could not find"):
        recursive_find_trainer_class_by_name("CTOrgIOUTrainer")


@pytest.mark.parametrize("name", TRAINER_NAMES)
def test_names_do_not_collide_with_nnunet_trainers(name):
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
    assert recursive_find_python_class(folder, name, "nnunetv2.training.nnUNetTrainer") is None


@pytest.mark.parametrize("name", TRAINER_NAMES)
def test_init_signature_is_nnunets(name):
    cls = getattr(importlib.import_module(SELECTABLE[name]), name)
    assert inspect.signature(cls.__init__) == inspect.signature(nnUNetTrainer.__init__)


def test_env_command_prints_the_folder_with_the_reexport(monkeypatch):
    from nnunet_ctorg.env import export_line, trainer_folder

    assert all((Path(trainer_folder()) / f).is_file() for f in ("ctorg_trainers.py", "benchmark_trainers.py"))
    line = export_line("bash", current=os.pathsep.join(["/elsewhere", trainer_folder()]))
    assert line.startswith("export nnUNet_extTrainer=")
    value = line.split("=", 1)[1].strip("'")
    assert value.split(os.pathsep) == [trainer_folder(), "/elsewhere"]


def test_iou_trainer_loss_is_iou_with_nnunets_deep_supervision_weights(planned_dataset):
    trainer = make_trainer(ours.CTOrgIOUTrainer, *planned_dataset)
    loss = trainer._build_loss()
    assert isinstance(loss, DeepSupervisionWrapper)
    n = len(trainer._get_deep_supervision_scales())
    w = np.array([1 / 2**i for i in range(n)])
    w[-1] = 0
    assert np.allclose(loss.weight_factors, w / w.sum())
    assert isinstance(loss.loss.dc, SoftIoULoss) and loss.loss.weight_ce == 0
    assert loss.loss.dc.do_bg is True and loss.loss.dc.power == 1.0
    assert loss.loss.dc.log is True and loss.loss.dc.batch_dice is True
    paper = make_trainer(ours.CTOrgIOUTrainer_plainIOU, *planned_dataset)._build_loss()
    assert paper.loss.dc.log is False

    rng = np.random.default_rng(0)
    shapes = [(2, 7, 8 // 2**i or 1, 8 // 2**i or 1, 8 // 2**i or 1) for i in range(n)]
    outputs = [torch.tensor(rng.normal(size=s), dtype=torch.float32) for s in shapes]
    targets = [torch.as_tensor(rng.integers(0, 7, (s[0], 1, *s[2:]))) for s in shapes]
    expected = sum(wi * float(loss.loss.dc(o, t)) for wi, o, t in zip(loss.weight_factors, outputs, targets))
    assert float(loss(outputs, targets)) == pytest.approx(expected, rel=1e-5)

    iou_ce = make_trainer(ours.CTOrgIOUCETrainer, *planned_dataset)._build_loss()
    assert iou_ce.loss.weight_ce == 1 and isinstance(iou_ce.loss.dc, SoftIoULoss)


@pytest.mark.parametrize("value, expected", [("", None), (" 7 ", 7), ("0", 0)])
def test_seed_comes_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(ours.SEED_ENVIRONMENT_VARIABLE, value)
    assert ours.seed_from_environment() == expected
    monkeypatch.delenv(ours.SEED_ENVIRONMENT_VARIABLE)
    assert ours.seed_from_environment() is None


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", str(2**32)])
def test_bad_seed_is_refused_with_its_value(monkeypatch, value):
    monkeypatch.setenv(ours.SEED_ENVIRONMENT_VARIABLE, value)
    with pytest.raises(ValueError, match=f"nnUNet_ctorg_seed.*{value!r}"):
        ours.seed_from_environment()


def test_seeded_trainer_seeds_every_generator_before_the_network_is_built(planned_dataset, monkeypatch):
    import random

    draws = []
    for seed in ("5", "5", "6"):
        monkeypatch.setenv(ours.SEED_ENVIRONMENT_VARIABLE, seed)
        trainer = make_trainer(ours.CTOrgIOUTrainer_tiny, *planned_dataset)
        assert trainer.training_seed == int(seed)
        draws.append((random.random(), float(np.random.uniform()), float(torch.rand(1))))
    assert draws[0] == draws[1] and all(a != b for a, b in zip(draws[0], draws[2]))
    monkeypatch.delenv(ours.SEED_ENVIRONMENT_VARIABLE)
    assert make_trainer(ours.CTOrgIOUTrainer_tiny, *planned_dataset).training_seed is None


def test_seeded_trainer_seeds_its_device_augmentation(planned_dataset, monkeypatch):
    from nnunet_ctorg.augmentation.pipeline import pack_parameters

    def draws(seed):
        if seed is None:
            monkeypatch.delenv(ours.SEED_ENVIRONMENT_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(ours.SEED_ENVIRONMENT_VARIABLE, seed)
        trainer = make_trainer(ours.CTOrgIOUTrainer, *planned_dataset)
        _, crop = training_transforms(trainer)
        return [pack_parameters(trainer.device_augmentation.draw_parameters((4, 1, *crop)))[0] for _ in range(3)]

    first, again, other, unseeded = draws("5"), draws("5"), draws("6"), draws(None)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))
    assert not any(torch.equal(a, b) for a, b in zip(first, unseeded))


class _RandomLoader:
    """Stand-in data loader: each batch is a draw of the process's global NumPy generator."""

    def __init__(self):
        self.thread_id = 0

    def set_thread_id(self, thread_id):
        self.thread_id = thread_id

    def __iter__(self):
        return self

    def __next__(self):
        return {"data": np.random.uniform(size=4)}


def test_seeded_trainer_replaces_nnunets_loaders_by_one_seeded_worker_each(planned_dataset, monkeypatch):
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    started = []

    def nnunets_loaders(self):  # nnU-Net's: two unseeded workers, batches in the order they finish
        started.extend(NonDetMultiThreadedAugmenter(_RandomLoader(), None, 2, seeds=None) for _ in range(2))
        for g in started[-2:]:
            next(g)  # nnU-Net starts its workers before returning them
        return tuple(started[-2:])

    monkeypatch.setattr(nnUNetTrainer, "get_dataloaders", nnunets_loaders)
    streams = []
    for seed in ("5", "5", "6"):
        monkeypatch.setenv(ours.SEED_ENVIRONMENT_VARIABLE, seed)
        trainer = make_trainer(ours.CTOrgIOUTrainer_tiny, *planned_dataset)
        train, val = trainer.get_dataloaders()
        try:
            assert [(g.num_processes, len(g.seeds)) for g in (train, val)] == [(1, 1), (1, 1)]
            assert train.seeds != val.seeds
            streams.append(np.concatenate([next(train)["data"] for _ in range(4)] + [next(val)["data"]]))
        finally:
            train._finish()
            val._finish()
    assert len(started) == 6 and not any(g.initialized for g in started)  # nnU-Net's workers were shut down
    assert np.array_equal(streams[0], streams[1]) and not np.array_equal(streams[0], streams[2])
    monkeypatch.delenv(ours.SEED_ENVIRONMENT_VARIABLE)
    trainer = make_trainer(ours.CTOrgIOUTrainer_tiny, *planned_dataset)
    unseeded = trainer.get_dataloaders()
    assert unseeded == tuple(started[-2:]) and all(g.initialized for g in unseeded)  # nnU-Net's, untouched
    for g in started:
        g._finish()


def test_iou_over_the_batch_and_the_plans_batch_dice(planned_dataset):
    plain = make_trainer(ours.CTOrgIOUTrainer_plainIOU, *planned_dataset, batch_dice=False)._build_loss()
    assert plain.loss.dc.batch_dice is False and plain.loss.weight_ce == 0
    plain = make_trainer(ours.CTOrgIOUTrainer_plainIOU, *planned_dataset, batch_dice=True)._build_loss()
    assert plain.loss.dc.batch_dice is True
    over_batch = make_trainer(ours.CTOrgIOUTrainer, *planned_dataset, batch_dice=False)._build_loss()
    assert over_batch.loss.dc.batch_dice is True and over_batch.loss.weight_ce == 0
    iou_ce = make_trainer(ours.CTOrgIOUCETrainer, *planned_dataset, batch_dice=False)._build_loss()
    assert iou_ce.loss.dc.batch_dice is False and iou_ce.loss.weight_ce == 1 and iou_ce.loss.dc.log is False


def test_trainers_pickle_with_their_state(planned_dataset):
    trainer = make_trainer(ours.CTOrgIOUTrainer_tiny, *planned_dataset)
    clone = pickle.loads(pickle.dumps(trainer._build_loss()))
    assert isinstance(clone.loss.dc, SoftIoULoss)
    assert trainer.num_epochs == 2 and trainer.num_iterations_per_epoch == 4


@pytest.mark.slow
def test_nnunetv2_train_and_predict_commands_run_our_trainer_on_cpu(nnunet_env):
    """Real CPU run through nnU-Net's own commands: checkpoint written, prediction readable and sane."""
    import SimpleITK as sitk

    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.demo import add_cpu_demo_configuration
    from nnunet_ctorg.phantoms.cli import generate_dataset

    src = nnunet_env / "ctorg"
    generate_dataset("ctorg", str(src), 5, "abdomen", (8.0, 8.0, 8.0), first_id=21, progress=False)
    generate_dataset("ctorg", str(src), 1, "abdomen", (8.0, 8.0, 8.0), first_id=0, progress=False)
    raw = convert_ctorg_dataset(src, nnunet_env / "nnUNet_raw", 991, "TinyTrain")
    env = dict(os.environ)

    def run(*cmd):
        proc = subprocess.run([nnunet_command(cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    run("nnUNetv2_plan_and_preprocess", "-d", "991", "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar")
    add_cpu_demo_configuration(nnunet_env / "nnUNet_preprocessed" / raw.name / "nnUNetPlans.json")
    env.update({ours.SEED_ENVIRONMENT_VARIABLE: "3", "nnUNet_n_proc_DA": "2"})
    model = nnunet_env / "nnUNet_results" / raw.name / "CTOrgIOUTrainer_tiny__nnUNetPlans__3d_cpu_demo"
    weights = []
    for attempt in range(2):  # the same seed twice: the same network, data-loader workers included
        if attempt:
            os.rename(model, model.with_name(model.name + "_first"))
        out = run("nnUNetv2_train", "991", "3d_cpu_demo", "0", "-tr", "CTOrgIOUTrainer_tiny", "-device", "cpu")
        assert "Using trainer 'CTOrgIOUTrainer_tiny'" in out
        checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        assert checkpoint["trainer_name"] == "CTOrgIOUTrainer_tiny"
        assert checkpoint["current_epoch"] == 2
        weights.append(checkpoint["network_weights"])
    log = next((model / "fold_0").glob("training_log_*.txt")).read_text()
    assert "augmentation on cpu" in log and "CPU augmentation" not in log  # the device pipeline ran
    assert "seeded training (nnUNet_ctorg_seed=3)" in log
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    pred_dir = nnunet_env / "pred"
    run("nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred_dir), "-d", "991", "-c", "3d_cpu_demo",
        "-f", "0", "-tr", "CTOrgIOUTrainer_tiny", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1")
    image = sitk.ReadImage(str(raw / "imagesTs" / "ctorg_000_0000.nii.gz"))
    pred = sitk.ReadImage(str(pred_dir / "ctorg_000.nii.gz"))
    assert pred.GetSize() == image.GetSize()
    assert np.allclose(pred.GetSpacing(), image.GetSpacing()) and np.allclose(pred.GetOrigin(), image.GetOrigin())
    labels = json.loads((raw / "dataset.json").read_text())["labels"].values()
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= set(labels)


class _DeepSupervisionNet(torch.nn.Module):
    """Stand-in network: a 1x1x1 convolution whose output is resized to every deep-supervision scale."""

    def __init__(self, n_classes: int, scales):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, n_classes, 1)
        self.scales, self.seen = scales, []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        y = self.conv(x)
        return [torch.nn.functional.interpolate(y, [round(s * f) for s, f in zip(x.shape[2:], scale)])
                for scale in self.scales]


def test_iou_trainer_loader_only_crops_and_train_step_augments_on_the_device(planned_dataset):
    trainer = make_trainer(ours.CTOrgIOUTrainer, *planned_dataset)
    transforms, initial_patch = training_transforms(trainer)
    assert transforms is None  # the data-loader workers only load and crop
    assert trainer.device_augmentation is not None
    patch = tuple(trainer.configuration_manager.patch_size)
    assert all(i >= p for i, p in zip(initial_patch, patch)) and tuple(initial_patch) != patch

    scales = trainer._get_deep_supervision_scales()
    trainer.network = _DeepSupervisionNet(len(trainer.label_manager.all_labels), scales)
    trainer.loss = trainer._build_loss()
    trainer.optimizer = torch.optim.SGD(trainer.network.parameters(), lr=0.01)
    calls = []
    augmentation = trainer.device_augmentation
    trainer.device_augmentation = lambda image, labels: calls.append(image.shape) or augmentation(image, labels)
    batch = {"data": torch.randn((2, 1, *initial_patch)),
             "target": torch.randint(-1, 7, (2, 1, *initial_patch), dtype=torch.int16), "keys": ["a", "b"]}
    result = trainer.train_step(batch)
    assert calls == [(2, 1, *initial_patch)]
    assert trainer.network.seen == [(2, 1, *patch)]
    assert np.isfinite(result["loss"])


def test_ablation_trainers_keep_nnunets_cpu_augmentation_or_none(planned_dataset):
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    da = make_trainer(ours.CTOrgIOUTrainer_nnUNetDA, *planned_dataset)
    transforms, initial_patch = training_transforms(da)
    assert any(isinstance(t, SpatialTransform) for t in transforms.transforms) and da.device_augmentation is None
    assert isinstance(da._build_loss().loss.dc, SoftIoULoss)

    no_da = make_trainer(ours.CTOrgIOUTrainer_NoDA, *planned_dataset)
    transforms, initial_patch = training_transforms(no_da)
    assert not any(isinstance(t, SpatialTransform) for t in transforms.transforms)
    assert list(initial_patch) == list(no_da.configuration_manager.patch_size)
    assert no_da.inference_allowed_mirroring_axes is None and no_da.device_augmentation is None


def test_device_pipeline_reads_the_plans_ct_normalisation(planned_dataset):
    trainer = make_trainer(ours.CTOrgIOUTrainer, *planned_dataset)
    training_transforms(trainer)
    warp = trainer.device_augmentation.transforms[0]
    props = trainer.plans_manager.foreground_intensity_properties_per_channel["0"]
    assert warp.image_fill == pytest.approx([(props["percentile_00_5"] - props["mean"]) / props["std"]])
    window = trainer.device_augmentation.transforms[3]
    assert window.ct_mean_std == [pytest.approx((props["mean"], props["std"]))]


class _PhysicalRotationTrainer(ours.CTOrgIOUTrainer):
    augmentation_parameters = AugmentationParameters(physical_rotation=True, label_interpolation="nearest")


@pytest.mark.parametrize("anisotropic", [False, True])
def test_the_plans_rotation_axes_and_spacing_reach_the_device_pipeline(planned_dataset, anisotropic):
    """What nnU-Net derives from the plan (rotation range, dummy 2-D, mirror axes, cranio-caudal axis) and the
    plan's spacing reach the pipeline, and the loader's crop is sized from our ranges."""
    configuration = {"patch_size": [8, 40, 32], "spacing": [4.0, 1.0, 1.25]} if anisotropic else {}
    transpose = {"transpose_forward": [1, 2, 0], "transpose_backward": [2, 0, 1]} if anisotropic else {}
    trainer = make_trainer(_PhysicalRotationTrainer, *planned_dataset, plans_update=transpose, **configuration)
    _, initial_patch = training_transforms(trainer)
    pipeline = trainer.device_augmentation
    warp, occlusion, low_resolution = pipeline.transforms[0], pipeline.transforms[1], pipeline.transforms[7]
    patch = tuple(trainer.configuration_manager.patch_size)
    spacing = tuple(trainer.configuration_manager.spacing)
    assert warp.patch_size == patch and warp.spacing == spacing
    assert warp.in_plane_only is anisotropic and low_resolution.ignore_axes == ((0,) if anisotropic else ())
    assert warp.rotation == pytest.approx(math.pi if anisotropic else math.radians(30))
    assert warp.mirror_axes == (0, 1, 2) and warp.label_interpolation == "nearest"
    assert occlusion.axis == (2 if anisotropic else list(trainer.plans_manager.transpose_forward).index(0))
    expected = augmentation_crop_size(_PhysicalRotationTrainer.augmentation_parameters, patch, warp.rotation,
                                      anisotropic, spacing)
    assert tuple(initial_patch) == expected and expected == warp.crop_size()
    if anisotropic:
        assert initial_patch[0] == patch[0] and all(i > p for i, p in zip(initial_patch[1:], patch[1:]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_step_on_cuda_with_amp_augments_on_the_device(planned_dataset):
    trainer = make_trainer(ours.CTOrgIOUTrainer, *planned_dataset, device="cuda")
    _, initial_patch = training_transforms(trainer)
    scales = trainer._get_deep_supervision_scales()
    trainer.network = _DeepSupervisionNet(len(trainer.label_manager.all_labels), scales).to("cuda")
    trainer.loss = trainer._build_loss()
    trainer.optimizer = torch.optim.SGD(trainer.network.parameters(), lr=0.01)
    batch = {"data": torch.randn((2, 1, *initial_patch)).pin_memory(),
             "target": torch.randint(-1, 7, (2, 1, *initial_patch), dtype=torch.int16).pin_memory(), "keys": ["a", "b"]}
    result = trainer.train_step(batch)
    assert np.isfinite(result["loss"])
    assert trainer.network.seen == [(2, 1, *trainer.configuration_manager.patch_size)]

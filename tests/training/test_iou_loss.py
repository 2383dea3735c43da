"""Maths of SoftIoULoss (Rister et al., paper 003 eq. 5-11) and its nnU-Net integration."""

import itertools

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1

from nnunet_ctorg.training.loss import SoftIoULoss

# The loss sums in float32 like nnU-Net's Dice losses, so comparisons allow float32 rounding.


def binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def as_input(v: np.ndarray) -> torch.Tensor:
    """A flat vector as a (1, 1, n) one-class 'image'."""
    return torch.as_tensor(v, dtype=torch.float64).reshape(1, 1, -1)


def iou_loss(p: np.ndarray, y: np.ndarray) -> float:
    loss = SoftIoULoss(apply_nonlin=None, do_bg=True, smooth=0.0, ddp=False)
    return float(loss(as_input(p), as_input(y)))


def test_equals_one_minus_iou_on_binary_inputs():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, y = rng.random(500) < 0.3, rng.random(500) < 0.4
        assert iou_loss(p.astype(float), y.astype(float)) == pytest.approx(1 - binary_iou(p, y), abs=1e-6)


def test_multiclass_binary_prediction_averages_per_class_iou_including_background():
    rng = np.random.default_rng(1)
    pred, ref = rng.integers(0, 3, (2, 8, 8, 8)), rng.integers(0, 3, (2, 8, 8, 8))
    x = torch.nn.functional.one_hot(torch.as_tensor(pred), 3).permute(0, 4, 1, 2, 3).double()
    loss = SoftIoULoss(apply_nonlin=None, do_bg=True, smooth=0.0, ddp=False)
    expected = 1 - np.mean([binary_iou(pred[b] == c, ref[b] == c) for b in range(2) for c in range(3)])
    assert float(loss(x, torch.as_tensor(ref)[:, None])) == pytest.approx(expected, abs=1e-6)
    no_bg = SoftIoULoss(apply_nonlin=None, do_bg=False, smooth=0.0, ddp=False)
    expected = 1 - np.mean([binary_iou(pred[b] == c, ref[b] == c) for b in range(2) for c in (1, 2)])
    assert float(no_bg(x, torch.as_tensor(ref)[:, None])) == pytest.approx(expected, abs=1e-6)


def test_pure_false_negative_costs_eps_over_n():
    rng = np.random.default_rng(2)
    y = (rng.random(400) < 0.5).astype(float)
    p = y * rng.uniform(0.0, 1.0, 400)  # p <= y everywhere
    eps, n = np.abs(p - y).sum(), y.sum()
    assert iou_loss(p, y) == pytest.approx(eps / n, rel=1e-6)


def test_pure_false_positive_costs_eps_over_n_plus_eps():
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.5).astype(float)
    p = np.maximum(y, rng.uniform(0.0, 1.0, 400))  # p >= y everywhere
    eps, n = np.abs(p - y).sum(), y.sum()
    assert iou_loss(p, y) == pytest.approx(eps / (n + eps), rel=1e-6)


def test_triangle_inequality_on_random_binary_triples():
    rng = np.random.default_rng(4)
    for _ in range(300):
        a, b, c = ((rng.random(30) < rng.uniform(0.1, 0.9)).astype(float) for _ in range(3))
        if min(a.sum(), b.sum(), c.sum()) == 0:
            continue
        assert iou_loss(a, c) <= iou_loss(a, b) + iou_loss(b, c) + 1e-6


def test_dice_loss_breaks_the_triangle_inequality_where_iou_keeps_it():
    # Paper 003's example: p = (0, 1), y = (1, 0), via the union p|y.
    p, y, union = np.array([0.0, 1.0]), np.array([1.0, 0.0]), np.array([1.0, 1.0])
    dice = MemoryEfficientSoftDiceLoss(apply_nonlin=None, do_bg=True, smooth=0.0, ddp=False)

    def dice_loss(a, b):
        return 1 + float(dice(as_input(a), as_input(b)))

    assert dice_loss(p, y) > dice_loss(p, union) + dice_loss(union, y)
    assert iou_loss(p, y) <= iou_loss(p, union) + iou_loss(union, y)


@pytest.mark.parametrize("power", [0.5, 2.0, 3.0])
def test_power_family_equals_iou_on_binary_and_differs_on_soft_inputs(power):
    rng = np.random.default_rng(5)
    y = (rng.random(200) < 0.5).astype(float)
    p_bin = (rng.random(200) < 0.5).astype(float)
    loss_m = SoftIoULoss(apply_nonlin=None, smooth=0.0, ddp=False, power=power)
    assert float(loss_m(as_input(p_bin), as_input(y))) == pytest.approx(iou_loss(p_bin, y), abs=1e-6)
    p_soft = rng.uniform(0.05, 0.95, 200)
    expected = 1 - (p_soft**power * y).sum() / ((p_soft**power).sum() + y.sum() - (p_soft**power * y).sum())
    assert float(loss_m(as_input(p_soft), as_input(y))) == pytest.approx(expected, rel=1e-6)
    assert float(loss_m(as_input(p_soft), as_input(y))) != pytest.approx(iou_loss(p_soft, y), rel=1e-3)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_power_must_be_positive(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        SoftIoULoss(power=bad)


def reference_iou_loss(logits: np.ndarray, labels: np.ndarray, batch_dice: bool, do_bg: bool, smooth: float,
                       power: float, mask: np.ndarray | None = None) -> float:
    """Independent NumPy implementation of eq. 5/8 with softmax, per class (and per sample)."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = (e / e.sum(1, keepdims=True)) ** power
    onehot = np.stack([labels[:, 0] == c for c in range(logits.shape[1])], 1).astype(float)
    if mask is not None:
        p, onehot = p * mask, onehot * mask
    classes = range(logits.shape[1]) if do_bg else range(1, logits.shape[1])
    groups = [slice(None)] if batch_dice else [slice(b, b + 1) for b in range(logits.shape[0])]
    values = []
    for g, c in itertools.product(groups, classes):
        inter = (p[g, c] * onehot[g, c]).sum()
        union = p[g, c].sum() + onehot[g, c].sum() - inter
        values.append((inter + smooth) / (union + smooth))
    return 1 - float(np.mean(values))


@pytest.mark.parametrize("batch_dice,do_bg,smooth,power",
                         [(False, True, 0.0, 1.0), (True, True, 1e-5, 1.0), (False, False, 1.0, 2.0),
                          (True, False, 0.0, 0.5)])
def test_agrees_with_independent_implementation(batch_dice, do_bg, smooth, power):
    rng = np.random.default_rng(6)
    logits = rng.normal(0, 2, (3, 4, 6, 7, 5))
    labels = rng.integers(0, 4, (3, 1, 6, 7, 5))
    loss = SoftIoULoss(softmax_helper_dim1, batch_dice=batch_dice, do_bg=do_bg, smooth=smooth, ddp=False,
                       power=power)
    ours = float(loss(torch.as_tensor(logits), torch.as_tensor(labels)))
    assert ours == pytest.approx(reference_iou_loss(logits, labels, batch_dice, do_bg, smooth, power), rel=1e-6)


def test_loss_mask_excludes_voxels_and_their_gradient():
    rng = np.random.default_rng(7)
    logits = torch.tensor(rng.normal(0, 1, (2, 3, 8, 8, 8)), requires_grad=True)
    labels = torch.as_tensor(rng.integers(0, 3, (2, 1, 8, 8, 8)))
    mask = torch.as_tensor(rng.random((2, 1, 8, 8, 8)) < 0.6)
    loss = SoftIoULoss(softmax_helper_dim1, smooth=1e-5, ddp=False)
    value = loss(logits, labels, loss_mask=mask)
    value.backward()
    grad = logits.grad.abs().sum(1, keepdim=True)
    assert torch.all(grad[~mask] == 0)
    assert torch.all(grad[mask] > 0)
    expected = reference_iou_loss(logits.detach().numpy(), labels.numpy(), False, True, 1e-5, 1.0, mask.numpy())
    assert float(value) == pytest.approx(expected, rel=1e-6)
    # Whatever the network says on masked voxels does not change the loss.
    changed = logits.detach().clone()
    changed[~mask.expand_as(changed)] = 50.0
    assert float(loss(changed, labels, loss_mask=mask)) == pytest.approx(float(value), rel=1e-6)


def test_ignore_label_through_nnunet_compound_loss_gets_no_gradient():
    rng = np.random.default_rng(8)
    logits = torch.tensor(rng.normal(0, 1, (2, 3, 6, 6, 6)), requires_grad=True, dtype=torch.float32)
    target = torch.as_tensor(rng.integers(0, 4, (2, 1, 6, 6, 6)))  # 3 = ignore
    criterion = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": True, "ddp": False}, {},
                               weight_ce=0, weight_dice=1, ignore_label=3, dice_class=SoftIoULoss)
    criterion(logits, target).backward()
    ignored = (target == 3).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    assert logits.grad[~ignored].abs().sum() > 0


def test_empty_reference_and_empty_prediction_give_zero_loss_with_smoothing():
    loss = SoftIoULoss(apply_nonlin=None, smooth=1.0, ddp=False)
    assert float(loss(as_input(np.zeros(10)), as_input(np.zeros(10)))) == pytest.approx(0.0)


def _ddp_worker(rank: int, world: int, port: int, logits: torch.Tensor, labels: torch.Tensor, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x = logits[rank::world].clone().requires_grad_(True)
        loss = SoftIoULoss(softmax_helper_dim1, batch_dice=True, smooth=1e-5, ddp=True)(x, labels[rank::world])
        loss.backward()
        # a NumPy copy travels by value; a tensor would be shared through this process, which may have exited
        # by the time the parent unpickles it (EOFError under load)
        out.put((rank, float(loss), x.grad.numpy().copy()))
    finally:
        dist.destroy_process_group()


def test_ddp_all_gather_gives_the_whole_batch_loss_on_every_worker():
    import socket

    import torch.multiprocessing as mp

    rng = np.random.default_rng(9)
    logits = torch.tensor(rng.normal(0, 1, (4, 3, 5, 5, 5)), dtype=torch.float32)
    labels = torch.as_tensor(rng.integers(0, 3, (4, 1, 5, 5, 5)))
    whole = SoftIoULoss(softmax_helper_dim1, batch_dice=True, smooth=1e-5, ddp=False)
    x = logits.clone().requires_grad_(True)
    expected = whole(x, labels)
    expected.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, logits, labels, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    for rank, value, grad in results:
        assert value == pytest.approx(float(expected), rel=1e-5)
        # Each worker's gradient is its share of the whole-batch gradient (DDP averages over workers).
        assert torch.allclose(torch.as_tensor(grad), x.grad[rank::2] * 2, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    rng = np.random.default_rng(10)
    logits = torch.tensor(rng.normal(0, 1, (2, 4, 8, 8, 8)), dtype=torch.float32)
    labels = torch.as_tensor(rng.integers(0, 4, (2, 1, 8, 8, 8)))
    mask = torch.as_tensor(rng.random((2, 1, 8, 8, 8)) < 0.8)
    eager = SoftIoULoss(softmax_helper_dim1, smooth=1e-5, ddp=False, power=2.0)
    compiled = torch.compile(SoftIoULoss(softmax_helper_dim1, smooth=1e-5, ddp=False, power=2.0))
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    la, lb = eager(a, labels, loss_mask=mask), compiled(b, labels, loss_mask=mask)
    la.backward()
    lb.backward()
    assert float(lb) == pytest.approx(float(la), rel=1e-5)
    assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7)


def test_log_iou_is_minus_log_of_the_per_class_iou():
    rng = np.random.default_rng(11)
    x = torch.softmax(torch.as_tensor(rng.normal(size=(2, 3, 6, 6, 6))), 1)
    y = torch.as_tensor(rng.integers(0, 3, (2, 1, 6, 6, 6)))
    for batch_dice in (False, True):
        plain = SoftIoULoss(apply_nonlin=None, batch_dice=batch_dice, smooth=1e-5, ddp=False)
        logged = SoftIoULoss(apply_nonlin=None, batch_dice=batch_dice, smooth=1e-5, ddp=False, log=True)
        onehot = torch.nn.functional.one_hot(y[:, 0], 3).permute(0, 4, 1, 2, 3).double()
        axes = (0, 2, 3, 4) if batch_dice else (2, 3, 4)
        inter, total = (x * onehot).sum(axes), x.sum(axes) + onehot.sum(axes)
        iou = (inter + 1e-5) / (total - inter + 1e-5)
        assert float(logged(x, y)) == pytest.approx(float(-torch.log(iou).mean()), rel=1e-5)
        assert float(plain(x, y)) == pytest.approx(float(1 - iou.mean()), rel=1e-5)


def test_log_iou_keeps_the_gradient_of_a_class_the_softmax_has_suppressed():
    # class 1 occupies a quarter of the voxels but its logit is 12 below the others everywhere:
    # 1 - IoU hardly moves it (gradient ~ p), -log IoU pulls it back at order 1/|class|
    y = torch.zeros((1, 1, 8, 8, 8), dtype=torch.long)
    y[..., :2] = 1
    logits = torch.zeros((1, 2, 8, 8, 8))
    logits[:, 1] = -12.0
    grads = {}
    for log in (False, True):
        z = logits.clone().requires_grad_(True)
        SoftIoULoss(apply_nonlin=softmax_helper_dim1, batch_dice=True, smooth=1e-5, ddp=False, log=log)(z, y).backward()
        grads[log] = float(-z.grad[0, 1][y[0, 0] == 1].mean())  # push of class 1's logit where it belongs
    assert 0 < grads[False] < 1e-6
    assert grads[True] > 1e3 * grads[False] and grads[True] > 1e-3


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_skip_absent_averages_only_the_classes_in_the_reference(batch_dice, log):
    rng = np.random.default_rng(5)
    x = torch.softmax(torch.as_tensor(rng.normal(size=(2, 4, 6, 6, 6))), 1)
    y = torch.as_tensor(rng.integers(0, 2, (2, 1, 6, 6, 6)))  # classes 2 and 3 absent everywhere
    y[1][y[1] == 1] = 0  # class 1 absent from example 1 only
    onehot = torch.nn.functional.one_hot(y[:, 0], 4).permute(0, 4, 1, 2, 3).double()
    axes = (0, 2, 3, 4) if batch_dice else (2, 3, 4)
    inter, gt = (x * onehot).sum(axes), onehot.sum(axes)
    iou = (inter + 1e-5) / (x.sum(axes) + gt - inter + 1e-5)
    per_class = -torch.log(iou) if log else 1 - iou
    skipping = SoftIoULoss(apply_nonlin=None, batch_dice=batch_dice, smooth=1e-5, ddp=False, log=log,
                           skip_absent=True)
    assert float(skipping(x, y)) == pytest.approx(float(per_class[gt > 0].mean()), rel=1e-5)
    assert (gt > 0).sum() == (2 if batch_dice else 3)
    every = SoftIoULoss(apply_nonlin=None, batch_dice=batch_dice, smooth=1e-5, ddp=False, log=log)
    assert float(every(x, y)) == pytest.approx(float(per_class.mean()), rel=1e-5)
    empty = SoftIoULoss(apply_nonlin=None, do_bg=False, smooth=1e-5, ddp=False, log=log, skip_absent=True)
    z = x.clone().requires_grad_(True)
    loss = empty(z, torch.zeros_like(y))  # background only, and background left out: nothing to learn
    loss.backward()
    assert loss.item() == 0 and float(z.grad.abs().sum()) == 0


def test_skip_absent_stops_batches_without_a_rare_class_from_killing_it():
    # The rare class (2) holds 8 of 4096 voxels of one batch and none of the next; its logit is 16 below the
    # others. With -log IoU over the batch the empty batch pushes its logit down harder than the full batch
    # pulls it up (the trap that lost the bladder); leaving absent classes out, the pull wins.
    def logit_push(skip_absent: bool) -> float:
        total = 0.0
        for holds_class in (True, False):
            y = torch.zeros((2, 1, 16, 16, 8), dtype=torch.long)
            y[..., 8:, :] = 1
            if holds_class:
                y[0, 0, 2:4, 2:4, 2:4] = 2
            z = torch.zeros((2, 3, 16, 16, 8))
            z[:, 2] = -16.0
            z.requires_grad_(True)
            SoftIoULoss(apply_nonlin=softmax_helper_dim1, batch_dice=True, smooth=1e-5, ddp=False, log=True,
                        skip_absent=skip_absent)(z, y).backward()
            total += float(-z.grad[:, 2].sum())  # > 0: the class's logits are pushed up, overall
        return total

    assert logit_push(skip_absent=False) < 0
    assert logit_push(skip_absent=True) > 0

"""The reliability benchmark's candidate losses, and the chosen one as the default of ``CTOrgIOUTrainer``."""

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ctorg.training import trainers as ours
from nnunet_ctorg.training.variants import demo_budgets as demo
from nnunet_ctorg.training.variants import reliability_candidates as candidates
from tests.training.trainer_setup import make_trainer


def test_the_candidates_over_the_batch_ignore_the_plans_batch_dice(planned_dataset):
    for cls in (demo.CTOrgIOUTrainer_demo, candidates.CTOrgIOUTrainer_batchIOU_demo):
        over_batch = make_trainer(cls, *planned_dataset, batch_dice=False)._build_loss()
        assert over_batch.loss.dc.batch_dice is True and over_batch.loss.weight_ce == 0, cls.__name__


def test_the_chosen_loss_skips_absent_classes_and_the_candidates_keep_theirs(planned_dataset):
    # the reliability benchmark's choice: -log IoU over the batch and the classes present in it
    for cls in (ours.CTOrgIOUTrainer, demo.CTOrgIOUTrainer_demo, demo.CTOrgIOUTrainer_demo3x,
                candidates.CTOrgIOUTrainer_batchLogIOU_skipAbsent_demo):
        dc = make_trainer(cls, *planned_dataset, batch_dice=False)._build_loss().loss.dc
        assert (dc.log, dc.batch_dice, dc.skip_absent, dc.do_bg) == (True, True, True, True), cls.__name__
    for cls in (ours.CTOrgIOUTrainer_plainIOU, ours.CTOrgIOUCETrainer, candidates.CTOrgIOUTrainer_batchLogIOU_demo,
                candidates.CTOrgIOUTrainer_batchIOU_demo):
        assert make_trainer(cls, *planned_dataset)._build_loss().loss.dc.skip_absent is False, cls.__name__


def test_cross_entropy_warmup_decays_linearly_to_the_final_weight(planned_dataset, monkeypatch):
    trainer = make_trainer(candidates.CTOrgIOUTrainer_batchIOU_CEwarmup_demo, *planned_dataset)
    n = trainer.ce_warmup_epochs
    assert n == 15 and trainer.ce_weight == 0
    assert [trainer.ce_weight_at(e) for e in (0, 5, n, n + 10)] == pytest.approx([1, 2 / 3, 0, 0])
    trainer.loss = trainer._build_loss()
    assert trainer.loss.loss.weight_ce == 1
    monkeypatch.setattr(nnUNetTrainer, "on_train_epoch_start", lambda self: None)
    for epoch, weight in ((3, 0.8), (n, 0.0)):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        assert trainer.loss.loss.weight_ce == pytest.approx(weight)
    constant = make_trainer(ours.CTOrgIOUCETrainer, *planned_dataset)
    assert [constant.ce_weight_at(e) for e in (0, 100)] == [1, 1]

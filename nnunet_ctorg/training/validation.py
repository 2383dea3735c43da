"""nnU-Net's final validation through the chunked engine, in bounded RAM.

``nnUNetTrainer.perform_actual_validation`` predicts each validation case whole, keeps every class's logits,
resamples them to the original spacing and exports several cases at once in a pool of spawned workers, then
computes the metrics in 8 more workers that each hold whole volumes: the step where nnU-Net users are killed
for memory most often (nnU-Net issues #2261, #2912, #2795, #2151). :class:`BoundedValidation` runs the same
validation case after case through :class:`~nnunet_ctorg.inference.chunked_predictor.ChunkedPredictor`
(chunks of tile rows, the export slab by slab), within a RAM budget:

- ``validation/CASE<file_ending>`` with the labels of nnU-Net's validation for the same checkpoint; with
  ``--npz`` also ``CASE.npz`` / ``CASE.pkl`` as nnU-Net writes them; ``summary.json`` from nnU-Net's own
  ``compute_metrics_on_folder``, with as many workers as the budget allows;
- the budget: ``nnUNet_ctorg_val_max_ram_gb`` (GB of resident memory of the training process), by default
  the process's memory plus 70 % of what the machine has available when the validation starts; a case that
  cannot fit fails alone, with the GB it needs, and the others are validated;
- on CUDA, the chunks also fit ``nnUNet_ctorg_val_max_gpu_gb`` (default: 90 % of the free GPU memory); where
  one row of tiles does not, the logit sums stay on the CPU and the network on the GPU (nnU-Net moves
  everything to the CPU after a failed try);
- ``--val`` after a killed validation continues: the cases already written with the same weights are kept;
- where the chunked engine cannot reproduce nnU-Net (cascades, region-based models, image-dependent
  normalisation, multi-channel input, ...), nnU-Net's own validation runs, after one log line saying why.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

VALIDATION_RAM_VARIABLE = "nnUNet_ctorg_val_max_ram_gb"
# on CUDA: the GPU memory of the process the chunks must fit in (unset: 90 % of the free GPU memory)
VALIDATION_GPU_VARIABLE = "nnUNet_ctorg_val_max_gpu_gb"
# chunk length (mm of the network grid, at least one tile row): the input is already preprocessed, so short
# chunks cost no resampling margins; the chunk's logit sums and the logits awaiting export scale with it
# (benchmarks/validation_memory.py: 20 classes, 640 slices, 300 mm chunks held 2.8 GB against nnU-Net's 5.3)
VALIDATION_CHUNK_MM = 100.0
# share of the memory available at the start of the validation that the default budget takes
DEFAULT_AVAILABLE_SHARE = 0.7
# bytes per voxel one worker of nnU-Net's compute_metrics holds: the reference and the prediction as read by
# the reader (float32 for SimpleITKIO) and the masks of one label; measured by benchmarks/validation_memory.py
METRICS_BYTES_PER_VOXEL = 12.0
# resident memory of one spawned metrics worker before it reads a case (torch and nnU-Net imported)
METRICS_WORKER_GB = 0.4
# what the outputs of a resumable validation were computed with
STATE_FILE = ".bounded_validation.json"


def available_memory_gb() -> float:
    """``MemAvailable`` of ``/proc/meminfo`` in GB (the machine's total where that is missing)."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.split()
    kb = fields.get("MemAvailable") or fields.get("MemTotal") or ["0"]
    return int(kb[0]) / 1024**2


def budget_from_environment(variable: str) -> float | None:
    """GB set in the environment variable ``variable``, or ``None`` when it is unset or empty."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return None
    try:
        budget = float(value)
    except ValueError:
        raise ValueError(f"{variable} must be a number of GB, got {value!r}") from None
    if not budget > 0:
        raise ValueError(f"{variable} must be > 0, got {value!r}")
    return budget


def validation_ram_budget_gb() -> float:
    """The validation's RAM budget: ``nnUNet_ctorg_val_max_ram_gb`` or, unset or empty, this process's resident
    memory plus :data:`DEFAULT_AVAILABLE_SHARE` of the memory available now."""
    from nnunet_ctorg.inference.chunk_budgets import current_rss_gb

    budget = budget_from_environment(VALIDATION_RAM_VARIABLE)
    return current_rss_gb() + DEFAULT_AVAILABLE_SHARE * available_memory_gb() if budget is None else budget


def weights_fingerprint(network: torch.nn.Module) -> str:
    """A hash of the network's weights: outputs of other weights are not taken over by a resumed validation."""
    digest = hashlib.sha1()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def metrics_processes(voxels: int, budget_gb: float, base_gb: float, most: int) -> int:
    """Workers of ``compute_metrics_on_folder`` that fit the budget beside ``base_gb`` (at least one): each holds
    :data:`METRICS_WORKER_GB` of imports and :data:`METRICS_BYTES_PER_VOXEL` per voxel of the largest case."""
    spare = (budget_gb - base_gb) * 1024**3
    per_worker = METRICS_WORKER_GB * 1024**3 + METRICS_BYTES_PER_VOXEL * voxels
    return int(max(1, min(most, spare // per_worker)))


class BoundedValidation(nnUNetTrainer):
    """nnU-Net's final validation case by case through the chunked engine, in a RAM budget (module docstring).

    Put it first among the bases of a trainer (``class MyTrainer(BoundedValidation, nnUNetTrainer)``); every
    trainer of nnunet-ctorg has it, and ``nnunet_ctorg.training.bounded_variants`` adds ``<Trainer>_BoundedVal``
    for nnU-Net's own trainers (``-tr nnUNetTrainer_BoundedVal``).
    """

    def perform_actual_validation(self, save_probabilities: bool = False):
        reason = self._bounded_validation_unsupported()
        chunked = None
        if reason is None:
            settings = self._chunk_settings()  # a bad budget is an error, not a reason to fall back
            try:
                chunked = self._chunked_predictor(settings)
            except ValueError as e:  # the chunked engine refuses this configuration
                reason = str(e)
        if reason is not None:
            self.print_to_log_file(f"nnU-Net's own validation runs: the bounded validation does not support this "
                                   f"model ({reason})", also_print_to_console=True)
            return super().perform_actual_validation(save_probabilities)
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        try:
            self._validate_cases(chunked, save_probabilities)
        finally:
            from nnunetv2.inference.sliding_window_prediction import compute_gaussian

            self.set_deep_supervision_enabled(True)
            compute_gaussian.cache_clear()

    def _bounded_validation_unsupported(self) -> str | None:
        """Why this trainer's validation must be nnU-Net's own, or ``None``."""
        if self.is_cascaded:
            return "a cascade's second stage takes the previous stage's segmentation as input"
        if self.configuration_manager.next_stage_names is not None:
            return "the low-resolution stage of a cascade also exports predictions for the next stage"
        if self.label_manager.has_regions:
            return "region-based training"
        return None

    @staticmethod
    def _chunk_settings():
        """Chunks of :data:`VALIDATION_CHUNK_MM` or what ``nnUNet_ctorg_val_max_ram_gb`` (and, on CUDA,
        ``..._gpu_gb``) allows."""
        from nnunet_ctorg.inference.chunked_predictor import ChunkSettings

        return ChunkSettings(VALIDATION_CHUNK_MM, validation_ram_budget_gb(), VALIDATION_RAM_VARIABLE,
                             budget_from_environment(VALIDATION_GPU_VARIABLE))

    def _chunked_predictor(self, settings):
        """A :class:`ChunkedPredictor` over this trainer's network as nnU-Net's validation sets its predictor up."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor

        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=True, device=self.device, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        return ChunkedPredictor(predictor, settings, overlap=False, preprocessed_input=True)

    def _validate_cases(self, chunked, save_probabilities: bool) -> None:
        from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p
        from nnunetv2.configuration import default_num_processes
        from torch import distributed as dist

        from nnunet_ctorg.inference.chunk_budgets import peak_rss_gb

        folder = join(self.output_folder, "validation")
        maybe_mkdir_p(folder)
        _, all_keys = self.do_split()
        # rank 0 alone decides what is kept and clears the rest; the other ranks wait for its answer
        resumable = self._prepare_folder(folder, all_keys, save_probabilities) if self.local_rank == 0 else None
        val_keys, last_barrier_at_idx = all_keys, 0
        if self.is_ddp:
            shared = [resumable]
            dist.broadcast_object_list(shared, src=0)
            resumable = shared[0]
            last_barrier_at_idx = len(all_keys) // dist.get_world_size() - 1
            val_keys = all_keys[self.local_rank::dist.get_world_size()]
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                         folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        budget = chunked.chunks.max_ram_gb
        self.print_to_log_file(f"bounded validation of {len(val_keys)} cases in chunks, RAM budget {budget:.1f} GB "
                               f"({VALIDATION_RAM_VARIABLE})", also_print_to_console=True)
        failed: dict[str, str] = {}
        largest = 0
        for i, k in enumerate(dataset_val.identifiers):
            if self.is_ddp and i < last_barrier_at_idx and (i + 1) % 20 == 0:  # as nnU-Net: no NCCL timeouts
                dist.barrier()
            data, _, _, properties = dataset_val.load_case(k)
            largest = max(largest, int(np.prod(properties["shape_before_cropping"])))
            if resumable and self._case_written(folder, k, save_probabilities):
                self.print_to_log_file(f"{k}: already validated with these weights, kept")
                continue
            self.print_to_log_file(f"predicting {k}, shape {tuple(data.shape)} (chunked)")
            try:
                self._validate_case(chunked, data, properties, join(folder, k), save_probabilities)
            except (ValueError, OSError, RuntimeError) as e:
                failed[k] = str(e)
                self.print_to_log_file(f"{k}: validation failed: {e}", also_print_to_console=True)
            del data
        self.print_to_log_file(f"bounded validation: peak RSS of the process {peak_rss_gb():.2f} GB")
        if self.is_ddp:
            dist.barrier()
        if self.local_rank == 0:
            world = dist.get_world_size() if self.is_ddp else 1
            # no more workers than cases: each spawned worker imports torch and nnU-Net before it reads a case
            most = min(default_num_processes * world, max(len(all_keys), 1))
            self._compute_metrics(folder, metrics_processes(largest, budget, chunked.base_gb, most), failed)

    def _prepare_folder(self, folder: str, keys: list[str], save_probabilities: bool) -> bool:
        """Clear what a killed or older validation left in ``folder``; whether the cases written there may be kept
        (written with these weights and settings). Half-written files go; with other weights (or no record of
        them) the outputs this validation writes are removed before the new weights are recorded, so that none
        of them reaches the metrics even where a case fails now."""
        import shutil

        from nnunet_ctorg.io import write_text_atomic

        for leftover in Path(folder).glob(".tmp-*"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        Path(folder, "summary.json").unlink(missing_ok=True)
        state = {"weights": weights_fingerprint(self.network), "mirroring": self.inference_allowed_mirroring_axes,
                 "tile_step_size": 0.5}
        path = Path(folder) / STATE_FILE
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        state = json.loads(json.dumps(state))  # tuples as lists, as they come back from the file
        if previous == state:
            return True
        for k in keys:
            for output in self._case_outputs(folder, k, save_probabilities):
                output.unlink(missing_ok=True)
        write_text_atomic(json.dumps(state), path)
        return False

    def _case_outputs(self, folder: str, k: str, save_probabilities: bool) -> list[Path]:
        """The files nnU-Net's validation writes for case ``k``."""
        names = [f"{k}{self.dataset_json['file_ending']}"] + ([f"{k}.npz", f"{k}.pkl"] if save_probabilities else [])
        return [Path(folder) / n for n in names]

    def _case_written(self, folder: str, k: str, save_probabilities: bool) -> bool:
        return all(path.is_file() for path in self._case_outputs(folder, k, save_probabilities))

    def _validate_case(self, chunked, data, properties: dict, truncated: str, save_probabilities: bool) -> None:
        """Predict one preprocessed case and write nnU-Net's validation outputs (labels last)."""
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

        from nnunet_ctorg.inference.probability_export import ProbabilityWriter

        name = os.path.basename(truncated)
        file_ending = self.dataset_json["file_ending"]
        shape = tuple(int(properties["shape_before_cropping"][i]) for i in self.plans_manager.transpose_backward)
        rw = self.plans_manager.image_reader_writer_class()
        sitk_stuff = properties.get("sitk_stuff", {})
        # the chunks run along nnU-Net's outer tile loop (transposed axis 0); the file is written along array axis 0
        streamed = (type(rw) is SimpleITKIO and file_ending in (".nii.gz", ".nii")
                    and len(sitk_stuff.get("spacing", ())) == 3 and self.plans_manager.transpose_forward[0] == 0)
        probabilities = None
        if save_probabilities:
            heads = self.label_manager.num_segmentation_heads
            probabilities = ProbabilityWriter(truncated, heads, shape, os.path.dirname(truncated))
        try:
            if streamed:  # slab in, slab out: the labels never exist whole
                from nnunet_ctorg.inference.nifti_slabs import NiftiLabelWriter

                out = NiftiLabelWriter(truncated + file_ending, shape, chunked.label_dtype, sitk_stuff["origin"],
                                       sitk_stuff["spacing"], sitk_stuff["direction"])
                try:
                    chunked.predict_preprocessed(data, properties, out, what=name, volume_bytes=0,
                                                 probabilities=probabilities)
                    if probabilities is not None:
                        probabilities.close(properties)
                except BaseException:
                    out.abort()
                    raise
                out.close()
                return
            # another reader/writer: the labels in memory, then the dataset's own writer (which copies them)
            labels = np.zeros(shape, chunked.label_dtype)
            chunked.predict_preprocessed(data, properties, labels, what=name, volume_bytes=3 * labels.nbytes,
                                         probabilities=probabilities)
            if probabilities is not None:
                probabilities.close(properties)
            self._write_labels_atomic(rw, labels, truncated + file_ending, properties)
        finally:
            if probabilities is not None:
                probabilities.abort()  # closes the temporary file (a no-op after close)

    @staticmethod
    def _write_labels_atomic(rw, labels: np.ndarray, path: str, properties: dict) -> None:
        """``rw.write_seg`` into a temporary folder under the file's own name (the writer picks its format by the
        ending, and some write side files, e.g. Tiff3DIO's ``CASE.json``), then moved beside, the labels last."""
        import shutil

        target = Path(path)
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}.d")
        tmp.mkdir(exist_ok=True)
        try:
            rw.write_seg(labels, str(tmp / target.name), properties)
            for written in sorted(tmp.iterdir(), key=lambda f: f.name == target.name):
                os.replace(written, target.parent / written.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _compute_metrics(self, folder: str, processes: int, failed: dict[str, str]) -> None:
        """nnU-Net's ``compute_metrics_on_folder`` over the written cases, logged as nnU-Net logs it."""
        from batchgenerators.utilities.file_and_folder_operations import join, subfiles
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder

        if failed:
            self.print_to_log_file(f"{len(failed)} validation case(s) failed and are not in summary.json: "
                                   f"{', '.join(sorted(failed))}", also_print_to_console=True)
        if not subfiles(folder, suffix=self.dataset_json["file_ending"], join=False):
            self.print_to_log_file("no validation case was written: no summary.json", also_print_to_console=True)
            return
        lm = self.label_manager
        metrics = compute_metrics_on_folder(join(self.preprocessed_dataset_folder_base, "gt_segmentations"),
                                            folder, join(folder, "summary.json"),
                                            self.plans_manager.image_reader_writer_class(),
                                            self.dataset_json["file_ending"],
                                            lm.foreground_regions if lm.has_regions else lm.foreground_labels,
                                            lm.ignore_label, chill=True, num_processes=processes)
        for label in metrics["mean"]:
            self.logger.log_summary(f"final_val/class_{label}_dice", metrics["mean"][label]["Dice"])
        self.logger.log_summary("final_val/foreground_dice", metrics["foreground_mean"]["Dice"])
        self.print_to_log_file("Validation complete", also_print_to_console=True)
        self.print_to_log_file("Mean Validation Dice: ", (metrics["foreground_mean"]["Dice"]),
                               also_print_to_console=True)

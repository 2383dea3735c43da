"""The steps of one chunk of a :class:`~nnunet_ctorg.inference.case_plan.CasePlan`, in the order they run.

1. :func:`network_input`: the chunk's padded network input (its slices filled by the preprocessing step);
2. :class:`TileRunner`: nnU-Net's sliding-window loop over the chunk's tiles, one fold at a time, into
3. :class:`LogitSums`: the half-precision sums, carried from chunk to chunk (the aggregator);
4. :class:`SliceExport`: the divided, fold-averaged logits of complete slices, resampled back and exported
   (argmax, or nnU-Net's softmax) as soon as every network slice an original slice reads is complete.
"""

import numpy as np

from nnunet_ctorg.inference.case_plan import CasePlan, plane_voxels


def network_input(plan: CasePlan, chunk: tuple[int, int], channels: int, fill):
    """Padded float32 (channels, ...) network input of ``chunk``: zeros in nnU-Net's padding, the network
    slices ``[n_lo, n_hi)`` written by ``fill(view, n_lo, n_hi)``."""
    import torch

    lo, hi = plan.chunk_slices(chunk)
    k, net, pad_below = plan.k, plan.grid.net, plan.pad_below
    n_lo, n_hi = max(lo - pad_below[k], 0), min(hi - pad_below[k], net[k])
    shape = list(plan.padded)
    shape[k] = hi - lo
    data = torch.zeros((channels, *shape), dtype=torch.float32)
    if n_hi > n_lo:
        dst = [slice(pad_below[d], pad_below[d] + net[d]) for d in range(3)]
        dst[k] = slice(n_lo + pad_below[k] - lo, n_hi + pad_below[k] - lo)
        fill(data[(slice(None), *dst)], n_lo, n_hi)
    return data


def cpu_bf16_supported() -> bool:
    """Whether this CPU has the bfloat16 instructions oneDNN computes with (AVX512-BF16 or AMX); oneDNN's own
    check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) accepts any AVX-512 CPU and emulates bf16 there."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def check_cpu_bf16(device_type: str) -> None:
    """Refuse ``cpu_bf16`` off the CPU or on a CPU without bf16 instructions (a ``ValueError`` saying why)."""
    if device_type != "cpu":
        raise ValueError(f"cpu_bf16 is for -device cpu, got device {device_type!r}")
    if not cpu_bf16_supported():
        raise ValueError("cpu_bf16: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX); oneDNN would "
                         "emulate them, slower than float32")


def network_autocast(device_type: str, cpu_bf16: bool = False):
    """The autocast context of a network call: nnU-Net's (float16 on CUDA, none elsewhere), or bfloat16 on the
    CPU with ``cpu_bf16``."""
    import torch
    from nnunetv2.utilities.helpers import dummy_context

    if cpu_bf16 and device_type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device_type, enabled=True) if device_type == "cuda" else dummy_context()


def network_threads(cap: bool) -> int:
    """The threads the network runs on: at most ``default_num_processes`` with ``cap``, as ``nnUNetv2_predict``
    sets them (``predict_logits_from_preprocessed_data``), else those the process has."""
    import torch
    from nnunetv2.configuration import default_num_processes

    threads = torch.get_num_threads()
    return min(default_num_processes, threads) if cap else threads


class TileRunner:
    """nnU-Net's sliding-window loop (its tile call, mirroring, Gaussian weighting) over given tiles.

    ``predictor``: the ``nnUNetPredictor``; ``sums_device``: where the sums live (the predictor's device, or
    the CPU where a GPU budget cannot hold them). ``cap_threads``: run the network on at most
    ``default_num_processes`` threads as ``nnUNetv2_predict`` does (a trainer's validation calls the sliding
    window directly, on the threads it has; oneDNN's float32 sums can depend on the thread count).
    ``cpu_bf16``: on the CPU, run the network under
    ``torch.autocast`` in bfloat16 (faster where the CPU has bf16 instructions; not nnU-Net's float32 labels).
    ``openvino``: run each fold's network compiled by OpenVINO instead (``OpenVINONetworks``; CPU only).
    """

    def __init__(self, predictor, sums_device, cpu_bf16: bool = False, cap_threads: bool = True,
                 openvino=None) -> None:
        self.predictor, self.sums_device = predictor, sums_device
        self.cap_threads = cap_threads
        self.cpu_bf16 = cpu_bf16 and predictor.device.type == "cpu"
        self.openvino = openvino
        self.gaussian = 1
        if predictor.use_gaussian:
            from nnunetv2.inference.sliding_window_prediction import compute_gaussian

            self.gaussian = compute_gaussian(tuple(predictor.configuration_manager.patch_size), sigma_scale=1. / 8,
                                             value_scaling_factor=10, device=sums_device)

    def run(self, params, data, slicers: list[tuple], logits, weights) -> None:
        """Add the tiles ``slicers`` of ``data`` to ``logits``/``weights`` with the fold's weights ``params``
        (``None``: the network's own, as in a trainer's validation)."""
        import torch
        from torch._dynamo import OptimizedModule

        p = self.predictor
        network = p.network._orig_mod if isinstance(p.network, OptimizedModule) else p.network
        if params is not None:
            network.load_state_dict(params)
        p.network = p.network.to(p.device)
        p.network.eval()
        threads = torch.get_num_threads()
        torch.set_num_threads(network_threads(self.cap_threads))
        # bf16: each network output in float32 before nnU-Net adds the mirrors (bf16 sums would round at ~0.4 %)
        to_float = p.network.register_forward_hook(lambda m, a, out: out.float()) if self.cpu_bf16 else None
        torch_network = p.network
        if self.openvino is not None:  # called where nnU-Net calls the network (its mirroring unchanged)
            p.network = self.openvino.network_for(params, network, torch.get_num_threads())
        try:
            with torch.inference_mode(), network_autocast(p.device.type, self.cpu_bf16):
                for sl in slicers:
                    workon = torch.clone(data[sl][None], memory_format=torch.contiguous_format).to(p.device)
                    prediction = p._internal_maybe_mirror_and_predict(workon)[0].to(self.sums_device)
                    if p.use_gaussian:
                        prediction *= self.gaussian
                    logits[sl] += prediction
                    weights[sl[1:]] += self.gaussian
        finally:
            p.network = torch_network
            torch.set_num_threads(threads)
            if to_float is not None:
                to_float.remove()


class LogitSums:
    """Per fold, nnU-Net's half-precision logit and weight sums of the padded network slices from :attr:`lo` on
    along axis ``k``: each chunk starts new sums, carrying those of the slices the previous chunk left
    incomplete."""

    def __init__(self, folds: int, heads: int, k: int, device) -> None:
        self.folds, self.heads, self.k, self.device = folds, heads, k, device
        self.sums: list[tuple] = []  # per fold (logits, weights)
        self.lo = 0

    def start_chunk(self, lo: int, shape) -> None:
        """New sums of the padded slices from ``lo`` on (spatial ``shape``), the overlap with the last carried."""
        import torch

        new = []
        for f in range(self.folds):
            logits = torch.zeros((self.heads, *shape), dtype=torch.half, device=self.device)
            weights = torch.zeros(tuple(shape), dtype=torch.half, device=self.device)
            carried = self.sums[f][0].shape[self.k + 1] - (lo - self.lo) if self.sums else 0
            if carried > 0:
                src, dst = [slice(None)] * 4, [slice(None)] * 4
                src[self.k + 1], dst[self.k + 1] = slice(lo - self.lo, None), slice(0, carried)
                logits[tuple(dst)] = self.sums[f][0][tuple(src)]
                weights[tuple(dst[1:])] = self.sums[f][1][tuple(src[1:])]
            new.append((logits, weights))
        self.sums, self.lo = new, lo

    def averaged(self, start: int, stop: int):
        """nnU-Net's logits of padded slices ``[start, stop)``: each fold's sums divided by its weights (0 where
        no tile reached, i.e. skipped outside a body box), averaged over the folds, on the CPU."""
        import torch

        if start < self.lo:
            raise RuntimeError(f"slices from {start} on are not complete but only those from {self.lo} are still "
                               f"summed")
        index = [slice(None)] * 4
        index[self.k + 1] = slice(start - self.lo, stop - self.lo)
        prediction = None
        for logits, weights in self.sums:
            w = weights[tuple(index[1:])]
            part = torch.div(logits[tuple(index)], w)
            part.masked_fill_(w == 0, 0)
            if torch.any(torch.isinf(part)):
                raise RuntimeError("Encountered inf in predicted array (as nnU-Net would report it)")
            part = part.to("cpu")
            prediction = part if prediction is None else prediction + part
        if len(self.sums) > 1:
            prediction /= len(self.sums)
        return prediction


def export_bytes_per_voxel(heads: int, probabilities: bool) -> float:
    """Bytes an export block holds per original voxel: two float64 steps of one class, its float16 result, the
    running maximum and its class; with probabilities every class's float16 result, their float32 copy and
    softmax, their transposed copy, and the writer's float32 slab and its box-cleared copy; the body mask of the
    block, where labels outside the body are cleared."""
    return 16.0 + 2.0 + 2.0 + 1.0 + 1.0 + (heads * (2.0 + 4.0 + 4.0 + 4.0 + 8.0) if probabilities else 0.0)


class SliceExport:
    """The logits of complete network slices, and the export of each original slice once the network slices
    it reads are complete: nnU-Net's probability resampling, then the argmax into ``out`` (uint8 labels of the
    whole array, or a streamed writer); with ``probabilities`` (a
    :class:`~nnunet_ctorg.inference.probability_export.ProbabilityWriter`) nnU-Net's ``--save_probabilities``
    path: the softmax goes there and the labels are its argmax. Blocks of about ``block_bytes``. ``body``: a
    :class:`~nnunet_ctorg.inference.body_crop.BodyRegion` outside which the labels are background (and the
    probabilities 1 for class 0): only its voxels got all their tiles.
    """

    def __init__(self, plan: CasePlan, resampling: dict, out, probabilities, label_manager,
                 block_bytes: int, body=None) -> None:
        self.plan, self.out, self.probabilities, self.label_manager = plan, out, probabilities, label_manager
        self.body = body
        self.resampler = plan.grid.export_resampler(plan.k, resampling)
        per_voxel = export_bytes_per_voxel(label_manager.num_segmentation_heads, probabilities is not None)
        self.slices_per_block = max(int(block_bytes / (per_voxel * plane_voxels(plan.grid.bbox_t, plan.k))), 1)
        self.logits = None  # divided logits of complete padded slices [lo, lo + their length)
        self.lo = 0
        self.exported = 0  # original (cropped) slices exported

    @property
    def done(self) -> bool:
        return self.exported == self.plan.grid.crop_t[self.plan.k]

    def add_complete(self, sums: LogitSums, complete: int) -> None:
        """Take the averaged logits of the padded slices below ``complete`` not taken yet."""
        import torch

        k = self.plan.k
        start = self.lo + self.logits.shape[k + 1] if self.logits is not None else sums.lo
        if complete <= start:
            return
        part = sums.averaged(start, complete)
        if self.logits is None:
            self.logits, self.lo = part, start
        else:
            self.logits = torch.cat([self.logits, part], dim=k + 1)

    def export_ready(self) -> None:
        """Export every original slice whose network slices are all held, then drop the logits no later slice
        reads."""
        plan, k = self.plan, self.plan.k
        if self.logits is None:
            return
        held = self.lo + self.logits.shape[k + 1]
        n, pb = plan.grid.crop_t[k], plan.pad_below[k]
        stop = self.exported
        while stop < n and plan.reads[stop, 1] + pb <= held:
            stop += 1
        if stop == self.exported:
            return
        for b_lo in range(self.exported, stop, self.slices_per_block):
            self._export_block(b_lo, min(b_lo + self.slices_per_block, stop))
        self.exported = stop
        if self.exported < n:
            keep = max(int(plan.reads[self.exported:, 0].min()) + pb - self.lo, 0)
            index = [slice(None)] * 4
            index[k + 1] = slice(keep, None)
            self.logits, self.lo = self.logits[tuple(index)].clone(), self.lo + keep

    def _export_block(self, o_lo: int, o_hi: int) -> None:
        """Original slices ``[o_lo, o_hi)``: resampled class by class, argmax (or softmax) and written."""
        plan, k, out = self.plan, self.plan.k, self.out
        grid, pad_below = plan.grid, plan.pad_below
        a, b = int(plan.reads[o_lo:o_hi, 0].min()), int(plan.reads[o_lo:o_hi, 1].max())
        index = [slice(pad_below[d], pad_below[d] + grid.net[d]) for d in range(3)]
        index[k] = slice(a + pad_below[k] - self.lo, b + pad_below[k] - self.lo)
        best = best_class = None
        channels = []
        for c in range(self.logits.shape[0]):
            channel = self.resampler.resample(self.logits[(c, *index)].numpy(), a, o_lo, o_hi, out_dtype=np.float16)
            if self.probabilities is not None:
                channels.append(channel)
            elif best is None:
                best, best_class = np.array(channel), np.zeros(channel.shape, out.dtype)
            else:
                better = channel > best
                best[better] = channel[better]
                best_class[better] = c
        tb = grid.tb
        index = [slice(*grid.bbox_t[tb[j]]) for j in range(3)]
        index[tb.index(k)] = slice(grid.bbox_t[k][0] + o_lo, grid.bbox_t[k][0] + o_hi)
        outside = None if self.body is None else ~self.body.region(tuple(index))
        if self.probabilities is not None:  # nnU-Net's calls: softmax in float32, then the argmax of the probabilities
            lm = self.label_manager
            stacked = np.stack(channels)
            del channels
            probs = lm.apply_inference_nonlin(stacked)
            del stacked
            best_class = lm.convert_probabilities_to_segmentation(probs).numpy().astype(out.dtype)
            probs = probs.numpy().transpose([0, *[d + 1 for d in tb]])
            if outside is not None:
                probs[:, outside] = 0
                probs[0, outside] = 1
            self.probabilities[tuple(index)] = probs
            del probs
        labels = best_class.transpose(tb)
        if outside is not None:
            labels[outside] = 0
        out[tuple(index)] = labels

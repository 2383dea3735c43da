"""nnU-Net's network executed by OpenVINO on the CPU (opt-in ``--cpu_openvino``).

The PyTorch network of each fold is converted with ``openvino.convert_model`` (traced on a small input, so the
converted model takes any tile shape) and compiled for the CPU in float32 (``INFERENCE_PRECISION_HINT f32``:
OpenVINO would otherwise pick bfloat16 on CPUs that have it). The compiled model is called where nnU-Net calls
the network, so nnU-Net's mirroring and Gaussian weighting stay as they are. Its logits are float32 but not
PyTorch's to the last bit (OpenVINO's kernels sum in another order; up to ~1e-3 relative on nnU-Net's default
3d_fullres network), so the labels can differ where two classes nearly tie: ``benchmarks/cpu_whole_body.py``
measures the agreement.
"""

import warnings

import numpy as np


def check_cpu_openvino(device_type: str) -> None:
    """Refuse ``cpu_openvino`` off the CPU or without the ``openvino`` package (a ``ValueError`` saying why)."""
    if device_type != "cpu":
        raise ValueError(f"cpu_openvino is for -device cpu, got device {device_type!r}")
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        raise ValueError(f"cpu_openvino needs the openvino package (pip install 'nnunet-ctorg[openvino]'): {e}") \
            from None


class OpenVINONetworks:
    """The OpenVINO-compiled network of each fold, compiled on first use and kept for the next cases.

    Args:
        n_channels: input channels of the network.
        patch_size: nnU-Net's patch size; the network is traced on a smaller input of the same divisibility.
        strides: the network's pooling strides per stage (plans' ``strides``) to choose that input; ``None``:
            trace on a whole patch.
    """

    def __init__(self, n_channels: int, patch_size, strides=None) -> None:
        # the smallest input whose deepest stage still has 2 voxels per axis (instance norm needs > 1 element)
        total = np.prod(np.asarray(strides, dtype=np.int64), axis=0) if strides else np.asarray(patch_size)
        self.trace_shape = (1, int(n_channels), *[int(min(2 * t, p)) for t, p in zip(total, patch_size)])
        self._compiled: dict[int, tuple] = {}  # id(params) -> (params, infer request); params kept alive
        self._core = None  # one OpenVINO Core, kept as long as the models it compiled (as OpenVINO's samples do)

    def network_for(self, params, network, threads: int):
        """A callable ``x -> logits`` (torch float32 tensors, on the CPU) running ``network`` with the fold weights
        ``params`` (already loaded into ``network``) in OpenVINO on ``threads`` threads."""
        key = id(params)
        if key not in self._compiled:
            self._compiled[key] = (params, self._compile(network, threads))
        request = self._compiled[key][1]

        def run(x):
            import torch

            request.infer({0: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
            return torch.from_numpy(request.get_output_tensor(0).data.copy())

        return run

    def _compile(self, network, threads: int):
        import openvino as ov
        import torch

        training = network.training
        network.eval()
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # OpenVINO traces with the deprecated torch.jit.trace
                model = ov.convert_model(network, example_input=torch.zeros(self.trace_shape))
        finally:
            network.train(training)
        if self._core is None:
            self._core = ov.Core()
        compiled = self._core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": int(threads)})
        return compiled.create_infer_request()

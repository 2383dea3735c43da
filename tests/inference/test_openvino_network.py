"""``--cpu_openvino``: nnU-Net's network compiled by OpenVINO, called where nnU-Net calls the network."""

import types

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings
from nnunet_ctorg.inference.openvino_network import OpenVINONetworks
from tests.inference.standin import nnunet_labels, standin_network, standin_plans, standin_predictor


@pytest.fixture(scope="module")
def real_ct_6mm(real_ct_dir):
    return sitk.ReadImage(str(real_ct_dir / "example_ct.nii.gz"))[::2, ::2, :]


def test_each_fold_runs_its_own_weights():
    import torch

    network = standin_network(4, 0)
    folds = [standin_network(4, f).state_dict() for f in (0, 1)]
    networks = OpenVINONetworks(1, (16, 24, 24))
    x = torch.randn((1, 1, 16, 24, 24), generator=torch.Generator().manual_seed(3)) * 2
    outputs = []
    for params in (*folds, folds[0]):
        network.load_state_dict(params)
        with torch.inference_mode():
            expected = network(x)
        got = networks.network_for(params, network, 1)(x)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
        outputs.append(got)
    assert not torch.allclose(outputs[0], outputs[1], atol=0.1)  # the folds differ
    assert torch.equal(outputs[0], outputs[2]) and len(networks._compiled) == 2  # fold 0 compiled once


def test_trace_input_is_the_smallest_the_strides_allow():
    # nnU-Net's default whole-body CT plan: 6 stages, the first pooling in-plane only
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert OpenVINONetworks(1, (112, 128, 128), strides).trace_shape == (1, 1, 32, 64, 64)
    assert OpenVINONetworks(2, (24, 48, 160), strides).trace_shape == (1, 2, 24, 48, 64)  # never above the patch
    assert OpenVINONetworks(1, (16, 24, 24)).trace_shape == (1, 1, 16, 24, 24)  # no strides: the patch


def test_every_tile_and_mirror_runs_in_openvino_with_nnunets_labels(real_ct_6mm, monkeypatch):
    plans = standin_plans(spacing=(2.5, 5.0, 5.0), patch=(32, 16, 16))
    predictor = standin_predictor(plans, folds=2, mirroring=True)
    reference = nnunet_labels(predictor, real_ct_6mm)
    calls = {"mirrored": 0, "openvino": 0}
    mirrored = predictor._internal_maybe_mirror_and_predict

    def count_mirrored(x):
        calls["mirrored"] += 1
        return mirrored(x)

    network_for = OpenVINONetworks.network_for

    def count_openvino(self, params, network, threads):
        run = network_for(self, params, network, threads)
        return lambda x: calls.__setitem__("openvino", calls["openvino"] + 1) or run(x)

    monkeypatch.setattr(predictor, "_internal_maybe_mirror_and_predict", count_mirrored)
    monkeypatch.setattr(OpenVINONetworks, "network_for", count_openvino)
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=60), cpu_openvino=True)
    labels = chunked.predict_image(real_ct_6mm)
    assert len(chunked.last_chunks) > 1 and calls["mirrored"] > 0
    # the warm-up, then every tile of both folds with its 8 mirrors; both folds compiled, PyTorch's network back
    assert calls["openvino"] == 1 + 8 * calls["mirrored"]
    assert len(chunked.openvino._compiled) == 2 and predictor.network.__class__.__name__ == "Sequential"
    assert labels.shape == reference.shape and labels.dtype == np.uint8
    assert np.mean(labels == reference) >= 0.999


def test_cpu_openvino_is_refused_off_the_cpu_without_the_package_and_with_cpu_bf16(monkeypatch, tmp_path):
    import sys

    import torch

    from nnunet_ctorg.inference.cli import predict_chunked_main

    with pytest.raises(ValueError, match="cpu_openvino is for -device cpu, got device 'cuda'"):
        ChunkedPredictor(types.SimpleNamespace(device=torch.device("cuda")), cpu_openvino=True)
    with pytest.raises(ValueError, match="cpu_bf16 and cpu_openvino exclude each other"):
        ChunkedPredictor(standin_predictor(), cpu_bf16=True, cpu_openvino=True)
    # the command refuses before it loads a model (this folder has none)
    with pytest.raises(SystemExit, match="error: --cpu_bf16 and --cpu_openvino exclude each other"):
        predict_chunked_main(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "-m", str(tmp_path / "no_model"),
                              "-device", "cpu", "--cpu_bf16", "--cpu_openvino"])
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed
    with pytest.raises(ValueError, match=r"cpu_openvino needs the openvino package \(pip install"):
        ChunkedPredictor(standin_predictor(), cpu_openvino=True)
    with pytest.raises(SystemExit, match="error: cpu_openvino needs the openvino package"):
        predict_chunked_main(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "-m", str(tmp_path / "no_model"),
                              "-device", "cpu", "--cpu_openvino"])


def test_the_ram_estimate_counts_openvinos_tile_buffers_once(real_ct_6mm, monkeypatch):
    """OpenVINO keeps a tile's buffers from the warm-up run, so they are in ``base_gb`` already
    (``benchmarks/openvino_tile_memory.py``); PyTorch's are freed after each tile and added to the estimate."""
    activations = 8.0 * 1024**3  # dominates the estimate's other terms
    monkeypatch.setattr(ChunkedPredictor, "_tile_activation_bytes", lambda self: activations)
    plans = standin_plans(spacing=(3.0, 6.0, 6.0), patch=(24, 16, 16))
    above_base = {}
    for cpu_openvino in (False, True):
        chunked = ChunkedPredictor(standin_predictor(plans), ChunkSettings(chunk_mm=None, max_ram_gb=64),
                                   cpu_openvino=cpu_openvino)
        chunked.predict_image(real_ct_6mm)
        above_base[cpu_openvino] = chunked.last_estimate_gb * 1024**3 - chunked.base_gb * 1024**3
    # the whole estimate moves by the activations, up to the other terms of the max (< 0.1 GB for this scan)
    assert above_base[False] - above_base[True] == pytest.approx(1.1 * activations, abs=0.1 * 1024**3)

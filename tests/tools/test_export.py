"""Export: ONNX round trips through ONNX Runtime at two input sizes (eager and deployed), TorchScript,
torch.compile without graph breaks, and the export command line."""

import pytest
import torch

from backbones import build_backbone, deploy
from heads import build_segmentor
from tools.export import main
from tools.runtime.export import export_onnx
from tools.runtime.engines import load_engine
from tools.runtime.verify import as_list, verify

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Batch 2 and sides above the 64-pixel minimum: the export must not specialize any dimension to the example.
EXAMPLE = (2, 3, 96, 128)
CHECK_SHAPES = [(1, 3, 96, 128), (2, 3, 97, 131)]


def _model(kind: str, randomize):
    if kind == "backbone":
        return randomize(build_backbone("resnet18", out_strides=(4, 8, 16, 32))).eval()
    head, output_stride = kind.split("-os")
    return randomize(build_segmentor(head=head, backbone="resnet18", num_classes=5,
                                     output_stride=int(output_stride))).eval()


@pytest.mark.parametrize("kind, deployed", [("backbone", True), ("fpn-os32", False), ("deeplabv3plus-os16", True)])
def test_onnx_round_trip_at_two_sizes(kind, deployed, tmp_path, randomize):
    model = _model(kind, randomize)
    path = str(tmp_path / "model.onnx")
    export_onnx(deploy(model) if deployed else model, path, example=torch.randn(EXAMPLE))
    import onnx

    proto = onnx.load(path)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3])), "batch, height and width must be dynamic"
    # Compared with the *original* eager model, so a deployed export also checks the folding.
    for shape, err in verify(model, as_list(load_engine(path, engine="onnxruntime")), CHECK_SHAPES):
        assert err < 1e-4, (shape, err)


def test_torchscript_eager_and_deployed(randomize):
    for model in (_model("backbone", randomize), _model("fpn-os32", randomize)):
        x = torch.randn(1, 3, 97, 131)
        with torch.no_grad():
            ref = model(x)
            for candidate in (model, deploy(model)):
                out = torch.jit.script(candidate)(x)
                for o, r in zip(out if isinstance(out, list) else [out], ref if isinstance(ref, list) else [ref]):
                    assert (o - r).abs().max() / r.abs().max() < 1e-4


def test_compile_fullgraph_without_graph_breaks(randomize):
    # One Inductor compile (the expensive part of this file) on the deployed backbone; the deployed segmentation
    # model is checked for graph breaks with the cheap "eager" backend, which runs Dynamo's tracing only.
    backbone = _model("backbone", randomize)
    x = torch.randn(1, 3, 96, 128)
    fast = deploy(backbone)
    compiled = torch.compile(fast, fullgraph=True, dynamic=False)
    with torch.no_grad():
        for o, r in zip(compiled(x), backbone(x)):
            assert (o - r).abs().max() / r.abs().max() < 1e-4
    torch._dynamo.reset()
    seg = _model("deeplabv3plus-os16", randomize)
    traced = torch.compile(deploy(seg), fullgraph=True, backend="eager")
    with torch.no_grad():
        ref = seg(x)
        assert (traced(x) - ref).abs().max() / ref.abs().max() < 1e-4
    torch._dynamo.reset()


def test_export_command_from_checkpoint(tmp_path, randomize, capsys):
    model = randomize(build_segmentor(head="fcn", backbone="resnet18", num_classes=3))
    config = {"backbone": "resnet18", "head": "fcn", "output_stride": 32, "norm": "bn"}
    ckpt = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "config": config, "classes": ["a", "b", "c"]}, ckpt)
    before = ckpt.read_bytes()
    assert main(["--checkpoint", str(ckpt), "--format", "torchscript", "--deploy", "--size", "96x128"]) == 0
    out = capsys.readouterr().out
    # The export lands beside the checkpoint under its own name; the checkpoint keeps its bytes.
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.deploy.ts", "best.pt"]
    assert out.count("ok  ") == 4 and "FAIL" not in out
    # The written file is the deployed model: no BatchNorm left in the scripted graph.
    written = tmp_path / "best.deploy.ts"
    scripted = torch.jit.load(str(written))
    assert not any("BatchNorm" in m.original_name for m in scripted.modules())
    run = as_list(load_engine(written))
    assert all(err < 1e-4 for _, err in verify(model.eval(), run, [(1, 3, 80, 72)]))


def test_export_command_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit, match="1"):
        main(["--format", "onnx"])
    assert "--checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="1"):
        main(["--model", "resnet18", "--size", "48x48"])
    assert "--min-size" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="1"):
        main(["--checkpoint", str(tmp_path / "missing.pt")])
    assert "not found" in capsys.readouterr().err

"""Export: ONNX round trips through ONNX Runtime at two input sizes (eager and deployed), TorchScript,
torch.compile without graph breaks, and the export command line: files beside the checkpoint under their own
names, the checkpoint's bytes untouched, OpenVINO int8 really quantized, and nothing written on any failure."""

import sys

import pytest
import torch

import tools.export as export_tool
from backbones import build_backbone, deploy
from heads import build_segmentor
from tools.data.synthetic import SHAPE_CLASSES
from tools.engine.checkpoint import save_checkpoint
from tools.tasks.segmentation.model import build_model
from tools.export import main
from tools.runtime.runners import load_runner, openvino_is_quantized
from tools.runtime.export import export_onnx
from tools.runtime.verify import as_list, verify

from tests.conftest import randomize_norms

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
    for shape, err in verify(model, as_list(load_runner(path, engine="onnxruntime")), CHECK_SHAPES):
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
    run = as_list(load_runner(written))
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


# A run's checkpoint as tools.train_seg writes it (random weights): the model, its config and its classes.
RUN_CONFIG = {"backbone": "resnet18", "head": "fcn", "output_stride": 32, "norm": "bn", "dataset": "synthetic",
              "train_split": "train", "val_split": "val", "data_kwargs": {"num_images": 4, "image_size": 64},
              "crop_size": [64]}


@pytest.fixture
def run_dir(tmp_path):
    model = randomize_norms(build_model(RUN_CONFIG, len(SHAPE_CLASSES))).eval()
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "config": RUN_CONFIG,
                                           "classes": list(SHAPE_CLASSES)})
    return tmp_path


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_onnx_export_lands_beside_the_checkpoint_and_records_the_classes(run_dir, capsys):
    ckpt = run_dir / "best.pt"
    before = ckpt.read_bytes()
    assert main(["--checkpoint", str(ckpt), "--format", "onnx", "--size", "80x80"]) == 0
    assert "FAIL" not in capsys.readouterr().out
    assert ckpt.read_bytes() == before
    assert _listing(run_dir) == ["best.onnx", "best.pt"]  # no staging folder left behind
    run = load_runner(run_dir / "best.onnx", engine="onnxruntime")
    assert run.metadata["classes"] == list(SHAPE_CLASSES) and run.metadata["precision"] == "fp32"


def test_openvino_int8_export_is_quantized_and_follows_fp32(run_dir, capsys):
    ov = pytest.importorskip("openvino")
    ckpt = run_dir / "best.pt"
    before = ckpt.read_bytes()
    assert main(["--checkpoint", str(ckpt), "--format", "openvino", "--precision", "int8", "--calib-images", "3",
                 "--size", "80x80"]) == 0
    out = capsys.readouterr().out
    assert "convolutions in int8 (ort, calibrated on 3 training images)" in out
    assert "ok   openvino int8" in out and "logits correlation" in out
    assert ckpt.read_bytes() == before
    assert _listing(run_dir) == ["best.int8.bin", "best.int8.xml", "best.pt"]
    assert openvino_is_quantized(ov.Core().read_model(str(run_dir / "best.int8.xml")))
    run = load_runner(run_dir / "best.int8.xml", engine="openvino")
    assert run.precision == "int8" and run.metadata["calibration_images"] == 3
    assert run.metadata["classes"] == list(SHAPE_CLASSES)


def test_export_bad_input_writes_nothing(run_dir, tmp_path_factory, monkeypatch, capsys):
    ckpt = str(run_dir / "best.pt")
    listing = _listing(run_dir)

    def fails(args, match):
        with pytest.raises(SystemExit, match="1"):
            main(["--checkpoint", ckpt, "--size", "80x80", *args])
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert match in err, err
        assert _listing(run_dir) == listing

    fails(["--format", "torchscript", "--output", ckpt], "would overwrite the checkpoint")
    fails(["--format", "openvino", "--output", str(run_dir / "model.onnx")], "must end in .xml")
    fails(["--format", "onnx", "--precision", "bf16"], "ONNX Runtime has no bf16 CPU kernels")
    fails(["--format", "torchscript", "--precision", "int8"], "needs --format onnx or openvino")
    with pytest.raises(SystemExit, match="1"):
        main(["--model", "resnet18", "--precision", "int8"])
    assert "no dataset to calibrate on" in capsys.readouterr().err
    # A run whose dataset is gone has nothing to calibrate on.
    moved = dict(RUN_CONFIG, dataset="folder", root=str(tmp_path_factory.mktemp("gone") / "data"), data_kwargs={})
    model = build_model(RUN_CONFIG, len(SHAPE_CLASSES))
    save_checkpoint(run_dir / "best.pt", {"model": model.state_dict(), "config": moved,
                                          "classes": list(SHAPE_CLASSES)})
    fails(["--format", "onnx", "--precision", "int8"], "--calib-root")
    monkeypatch.setattr(export_tool, "cpu_supports_bf16", lambda engine="torch": False)
    fails(["--format", "openvino", "--precision", "bf16"], "no native bf16")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # not installed
    fails(["--format", "onnx"], 'install it with pip install -e ".[deploy]"')
    monkeypatch.undo()

    def truncated_export(model, path, **kwargs):  # a file cut short, as by a full disk
        with open(path, "wb") as f:
            f.write(b"\x08\x07\x12\x07pytorch")

    monkeypatch.setattr(export_tool, "export_onnx", truncated_export)
    fails(["--format", "onnx"], "cannot load")

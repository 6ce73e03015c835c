"""Two CPU processes (torchrun, gloo) train the same model as one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tools.engine.checkpoint import load_checkpoint
from tools.tasks.segmentation.model import build_model
from tools.train_seg import run

from tests.tools.fixtures import single_thread, subprocess_env, tiny_run_args  # noqa: F401

REPO = Path(__file__).resolve().parents[2]

# GroupNorm everywhere, and a head without dropout (BiSeNet): with BatchNorm each process would normalize its own
# half-batch, and dropout masks are drawn per process, so the runs could not match. Everything else (data
# order, augmentation, loss normalization, gradient averaging) is expected to be identical. SGD rather than AdamW:
# Adam divides each gradient by its own magnitude, which turns rounding noise in near-zero gradients into
# full-size steps, so only SGD lets the comparison be tight.
COMMON = ["--iters", "3", "--norm", "gn", "--head-kwargs", "{norm: gn}", "--eval-interval", "3",
          "--optimizer", "sgd", "--lr", "0.05", "--warmup-iters", "0", "--dice-weight", "1.0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process_with_the_global_batch(tmp_path, single_thread):
    env = subprocess_env(REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "tools.train_seg",
           *tiny_run_args(tmp_path, "ddp", *COMMON, "--batch-size", "2")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    # only rank 0 writes: one log line per event, not two
    assert proc.stdout.count("eval at iter 3") == 1

    single = run(tiny_run_args(tmp_path, "single", *COMMON, "--batch-size", "4"))

    ddp_ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    one_ckpt = load_checkpoint(tmp_path / "single" / "last.pt")
    torch.manual_seed(0)  # the trainer's seed: rebuild the common starting point
    initial = build_model(one_ckpt["config"], 5).state_dict()
    # Float sums run in another order (all-reduce of two half-batch gradients vs one backward pass), so the
    # weights agree to rounding, not bit for bit. Compare the difference with how far training moved them:
    # a wrong data split, loss normalization or gradient scale is off by a visible share of that movement.
    moved = max((one_ckpt["model"][k] - v).abs().max().item() for k, v in initial.items() if v.is_floating_point())
    apart = max((one_ckpt["model"][k] - ddp_ckpt["model"][k]).abs().max().item()
                for k, v in initial.items() if v.is_floating_point())
    # Measured: moved ~7e-2, apart ~1e-7; normalizing the loss per process instead of over the global batch
    # (the usual DDP recipe) puts them ~2e-3 apart, so this bound catches it with room to spare.
    assert moved > 1e-2 and apart < 1e-4 * moved, (moved, apart)

    def rows(name, kind):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["type"] == kind]

    ddp_losses = [r["loss"] for r in rows("ddp", "train")]
    assert ddp_losses == pytest.approx([r["loss"] for r in rows("single", "train")], rel=1e-5)
    # the confusion matrix is summed over both processes' shards of the validation set
    ddp_val = rows("ddp", "val")[-1]
    assert ddp_val["pixel_accuracy"] == pytest.approx(single["pixel_accuracy"], abs=1e-3)
    assert ddp_val["miou"] == pytest.approx(single["miou"], abs=1e-3)


def test_ctrl_c_under_torchrun_stops_every_process_at_the_same_step(tmp_path):
    # A terminal's Ctrl-C reaches torchrun and both processes, and torchrun forwards it once more: the processes
    # must agree on the step to stop after (rank 0 saves alone), and the forwarded copy must not cut the save.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "tools.train_seg",
           *tiny_run_args(tmp_path, "ddp", *COMMON, "--batch-size", "2", "--iters", "40", "--eval-interval", "100")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    log, deadline = tmp_path / "ddp" / "metrics.jsonl", time.time() + 180
    while proc.poll() is None and time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted: ")]
    assert len(lines) == 1 and "SIGINT at iteration" in lines[0], err[-3000:]  # rank 0 only
    saved = load_checkpoint(tmp_path / "ddp" / "last.pt")["iteration"]
    assert 2 <= saved < 40 and f"at iteration {saved}/40: saved" in lines[0]
    # neither process went on past the step the other stopped after
    assert f"iter {saved + 1}/" not in out


def test_sync_bn_on_cpu_processes_is_refused_before_training(tmp_path, monkeypatch):
    # Pretend torchrun started two CPU processes; the check must fire before any collective is attempted.
    import tools.engine.trainer as trainer
    from tools.engine.distributed import DistInfo

    monkeypatch.setattr(trainer.dist_utils, "init_distributed",
                        lambda device: DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu")))
    with pytest.raises(ValueError, match="sync_bn needs CUDA"):
        run(tiny_run_args(tmp_path, "sync", "--norm", "sync_bn"))
    assert not (tmp_path / "sync").exists()


def test_a_detector_trained_by_two_gloo_processes_scores_as_one_process_scores_it(tmp_path):
    # The detections of both ranks' shards of the validation set are merged before COCOeval, so the run's
    # final AP is the AP one process gives the same weights on the whole set.
    from tools import eval_seg
    from tests.tools.test_train_det import tiny_det_args

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "tools.train_det",
           *tiny_det_args(tmp_path, "ddp", "--iters", "2", "--batch-size", "2", "--val-batch-size", "1")]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and proc.stdout.count("eval at iter 2") == 1
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    merged = [r for r in map(json.loads, lines) if r["type"] == "val"][-1]
    assert merged["num_images"] == 8 and merged["num_detections"] > 0
    alone = eval_seg.run(["--checkpoint", str(tmp_path / "ddp" / "last.pt"), "--workers", "0"])
    for key in ("ap", "ap50", "ap75", "ar100", "num_detections"):
        assert merged[key] == alone[key], key
    assert merged["per_class_ap"] == alone["per_class_ap"]

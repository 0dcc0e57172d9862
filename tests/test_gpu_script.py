"""benchmarks/gpu.sh (issue 15, part 3) on the CPU: its dry run writes every part, each with figures or an error,
beside the targets; a part that raises is recorded and the others still run. No GPU is needed or used here."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["vit_b16_infer", "vit_b16_train", "swin_t_infer", "data_wait", "torchrun"]
ISSUE_TARGETS = {("vit_b16_infer", "ratio", ">=", 1.1), ("vit_b16_infer", "mfu", ">=", 0.45),
                 ("vit_b16_train", "mfu", ">=", 0.35), ("data_wait", "data_fraction", "<", 0.05),
                 ("torchrun", "success", "==", True)}


@pytest.fixture(scope="module")
def gpu():
    """benchmarks/gpu.py, imported as a module."""
    spec = importlib.util.spec_from_file_location("vitkit_gpu_script", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _check_part(name: str, part: dict) -> None:
    assert "figures" in part or "error" in part, (name, part)
    assert part["device_name"] and part["torch"] == torch.__version__
    checked = {(name, c["figure"], c["op"], c["target"]) for c in part["checks"]}
    assert {t for t in ISSUE_TARGETS if t[0] == name} <= checked  # every part carries its targets, error or not


def test_dry_run_writes_every_part_with_its_targets(tmp_path, timm):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run", "--threads", "1", "--out",
                           str(out)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["dry_run"] is True and "not GPU figures" in record["note"]
    assert record["env"]["torch"] == torch.__version__ and record["env"]["device"] == "cpu"
    declared = {(p, t["figure"], t["op"], t["target"]) for p, ts in record["targets"].items() for t in ts}
    assert ISSUE_TARGETS <= declared
    assert list(record["parts"]) == PARTS and set(record["summary"]) == set(PARTS)
    for name, part in record["parts"].items():
        _check_part(name, part)
        assert "error" not in part, (name, part["error"])  # on the CPU every part runs, with tiny models
        for c in part["checks"]:
            assert c["measured"] is not None and c["met"] in (True, False)
    infer = record["parts"]["vit_b16_infer"]["figures"]
    assert infer["ratio"] > 0 and 0 < infer["mfu"] and infer["forward_flops_per_image"] > 0
    assert record["parts"]["swin_t_infer"]["figures"]["mfu"] > 0  # FLOPs counted, Swin is outside the analytic model
    wait = record["parts"]["data_wait"]["figures"]
    assert 0 <= wait["data_fraction"] <= 1 and wait["data_s"] <= wait["train_s"]
    run = record["parts"]["torchrun"]
    assert run["figures"]["success"] is True and run["figures"]["epoch_s"] > 0
    assert "--nproc_per_node" in run["settings"]["command"]


def test_a_failing_part_is_recorded_and_the_rest_run(gpu, tmp_path, monkeypatch, timm):
    def broken(run):
        raise RuntimeError("out of memory (pretend)")

    monkeypatch.setitem(gpu.PART_FNS, "vit_b16_infer", broken)
    out = tmp_path / "sub" / "gpu.json"
    assert gpu.main(["--dry-run", "--threads", "1", "--parts", "vit_b16_infer,swin_t_infer", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert list(record["parts"]) == ["vit_b16_infer", "swin_t_infer"]
    failed = record["parts"]["vit_b16_infer"]
    assert failed["error"] == "RuntimeError: out of memory (pretend)" and "Traceback" in failed["traceback"]
    assert [c["target"] for c in failed["checks"]] == [1.1, 0.45]  # the targets stay beside the error
    _check_part("vit_b16_infer", failed)
    assert "figures" in record["parts"]["swin_t_infer"]
    assert record["summary"]["vit_b16_infer"] == "error"
    assert record["summary"]["swin_t_infer"] in ("met", "missed")  # which one depends on the CPU's timing


def test_arguments(gpu):
    args = gpu.parse_args([])  # the GPU run's defaults
    assert args.device == "cuda" and args.compile == "default" and args.parts == PARTS and not args.tiny
    assert args.batch == 256 and args.jpeg_count >= 2000 and args.out == Path("gpu.json")
    dry = gpu.parse_args(["--dry-run", "--parts", "torchrun,data_wait", "--batch", "4"])
    assert (dry.device, dry.tiny, dry.compile, dry.batch, dry.parts) == ("cpu", True, "none", 4,
                                                                         ["torchrun", "data_wait"])
    for bad in (["--parts", "vit_b16_infer,nope"], ["--dry-run", "--device", "cuda"], ["--jpeg-size", "500"],
                ["--dry-run", "--jpeg-count", "3"]):
        with pytest.raises(SystemExit):
            gpu.parse_args(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_it_says_so(gpu, tmp_path, capsys):
    assert gpu.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "--dry-run" in capsys.readouterr().err and not (tmp_path / "x.json").exists()

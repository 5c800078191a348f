"""`python -m rqscale.bench train` on the debug stage-2 shapes, 1 warm-up + 1 timed step per loop.

In a subprocess: the benchmark makes a 1-rank process group, sets DeepSpeed's environment and changes
malloc settings for its process, none of which should leak into the test session."""
import json
import subprocess
import sys

import torch

from rqscale.bench.train import MasterWeights, report
from tests.conftest import DEBUG_STAGE2, REPO


def test_train_benchmark_reports_rates_overhead_and_mfu():
    done = subprocess.run([sys.executable, "-m", "rqscale.bench", "train", "--config", DEBUG_STAGE2, "--warmup", "1",
                           "--repeats", "1", "--recovery-s", "12.5"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    r = json.loads(lines[-1])
    assert r["recovery_s"] == 12.5 and "recovery after a worker failure: 12.5 s" in done.stdout
    assert r["engine"] == {"zero_stage": 3, "precision": "bf16", "world_size": 1}
    assert r["matmul_bf16_gflops"] > 0 and r["matmul_fp32_gflops"] > 0 and r["train_gflop_per_sample"] > 0
    assert r["machine"]["cores"] >= 1 and r["batch"] == 32 and r["code_shape"] == [8, 8, 4]
    for setting in ("default", "retained"):
        x = r[setting]
        for loop in ("plain", "engine"):
            assert x[loop]["images_per_s"] > 0 and 0 < x[loop]["mfu"] < 1.5, (setting, loop, x[loop])
            assert len(x[loop]["step_times_s"]) == 1
        assert x["overhead"] == 1 - x["engine"]["images_per_s"] / x["plain"]["images_per_s"]
    assert 0 < r["targets_s"] and r["autocast_images_per_s"] > 0
    loss = r["first_step_loss"]  # same batch, same RNG state: the two loops compute the same loss
    assert abs(loss["plain"] - loss["engine"]) < 0.02 * loss["plain"], loss
    assert "framework overhead" in done.stdout and "MFU vs bf16 peak" in done.stdout
    assert "not measured here" in report(r)  # without recovery_s


def test_master_weights_step_fp32_masters_and_round_into_bf16_copies():
    master = [torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([3.0]))]
    work = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in master]
    opt = MasterWeights(torch.optim.SGD(master, lr=1e-3), work, master)
    (work[0].sum() * 2 + work[1].sum()).backward()
    opt.step()
    assert master[0].dtype == torch.float32 and torch.allclose(master[0], torch.tensor([0.998, 1.998]))
    assert torch.equal(work[0], master[0].detach().to(torch.bfloat16)) and work[0].dtype == torch.bfloat16
    opt.zero_grad()
    assert work[0].grad is None and opt.param_groups[0]["lr"] == 1e-3

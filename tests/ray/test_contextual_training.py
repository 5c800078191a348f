"""The Contextual RQ-Transformer through the real Ray Train + DeepSpeed ZeRO-3 path (2 CPU workers,
gloo), the same path as the autoregressive model: the debug recipe (configs/debug/contextual.yaml) as
printed lowers the masked loss, and its Draft-and-Revise samples read as their class to an independent
classifier, the revised ones better than their drafts (the paper's central claim); a killed worker
resumes a contextual run exactly, masks and condition dropout included, and 2 workers' checkpoint
resumes on 1; rqscale.export consolidates its checkpoints."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from rqscale.eval.digit_fidelity import digit_fidelity
from tests.conftest import REPO
from tests.ray.conftest import STEPS, assert_same_weights, copy_checkpoint, final_weights, stage2_overrides, train_cli

pytestmark = pytest.mark.slow

DEBUG_CONTEXTUAL = f"{REPO}/configs/debug/contextual.yaml"
# Share of 500 class-balanced Draft-and-Revise samples the classifier must read as their class (chance:
# 10%), and the share of the drafts' misreads that revision must remove. Measured (Dec 2026, 2 cores, the
# config as printed): revised 94.5% / drafts 73.0% of 200 (1 worker, the demo's RQ-VAE), misreads cut by 80%;
# revised 99.4% / drafts 93.8% of 500 (2 workers, the test session's RQ-VAE), misreads cut by 90%.
# Near 100% the share of correct reads saturates, hence a bar on the misreads.
CONTEXTUAL_BAR = 0.7
MISREADS_REMOVED = 0.4


def contextual_overrides(rqvae: str, output_dir, name: str, *extra) -> list:
    return [DEBUG_CONTEXTUAL, f"run.output_dir={output_dir}", f"run.name={name}", f"stage2.rqvae_checkpoint={rqvae}", *extra]


@pytest.fixture(scope="session")
def contextual_model(rqvae_file, ray_runs):
    """The debug contextual recipe as printed, on 2 workers (the demo's layout)."""
    proc = train_cli(*contextual_overrides(rqvae_file, ray_runs, "contextual", "train.num_workers=2", "train.micro_batch=16"),
                     timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return ray_runs / "contextual", proc.stdout


def test_the_masked_loss_falls_on_the_cosine_schedule_and_the_picture_is_drawn(contextual_model):
    run_dir, log = contextual_model
    summary = json.load(open(run_dir / "summary.json"))
    # Chance is log K = 5.55 nats a code (K = 256); the run that set this bar ended at 4.56.
    assert summary["loss_last_step"] < math.log(256) - 0.7 < summary["loss_first_step"], summary
    metrics = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    fractions = [m["masked_fraction"] for m in metrics if "masked_fraction" in m]
    assert fractions and 0.5 < float(np.mean(fractions)) < 0.8  # Eq. 10's cosine schedule: 0.64 on average
    arrays = np.load(run_dir / "samples.npz")
    assert arrays["images"].shape == (80, 32, 32, 3) and list(arrays["classes"][::8]) == list(range(10))


def test_revised_samples_read_as_their_class_better_than_their_drafts(contextual_model, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rqscale.sample", "--checkpoint", str(contextual_model[0] / "rqtransformer.pt"),
                           "--num-samples", "500", "--class-label", *map(str, range(10)), "--save-draft", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    revised, drafts = (np.load(tmp_path / sub / "samples.npz") for sub in (".", "drafts"))
    assert np.array_equal(revised["labels"], drafts["labels"]) and list(revised["labels"][:10]) == list(range(10))
    fidelity = {name: digit_fidelity(a["images"], a["labels"]) for name, a in (("revised", revised), ("drafts", drafts))}
    removed = 1 - (1 - fidelity["revised"]) / max(1 - fidelity["drafts"], 1e-9)
    print(f"debug contextual recipe, 500 samples read as their class: revised {fidelity['revised']:.1%}, drafts "
          f"{fidelity['drafts']:.1%} (revision removed {removed:.0%} of the drafts' misreads)")
    assert fidelity["revised"] >= CONTEXTUAL_BAR
    assert removed >= MISREADS_REMOVED, fidelity


def short_contextual_run(rqvae_file, ray_runs, name: str, workers: int = 2, **kw):
    """6 steps of global batch 16 (micro-batches of 8), fp32, checkpoints every 2 steps; masks and
    condition dropout are randomness a resumed run must restore."""
    overrides = stage2_overrides(rqvae_file, ray_runs, name, "train.max_failures=2")
    overrides = [DEBUG_CONTEXTUAL] + [o for o in overrides[1:] if not o.startswith("train.num_workers")]
    proc = train_cli(*overrides, f"train.num_workers={workers}", **kw)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc


@pytest.fixture(scope="session")
def contextual_reference(rqvae_file, ray_runs):
    short_contextual_run(rqvae_file, ray_runs, "contextual-reference")
    return ray_runs / "contextual-reference"


def test_killed_worker_resumes_a_contextual_run_exactly(contextual_reference, rqvae_file, ray_runs):
    proc = short_contextual_run(rqvae_file, ray_runs, "contextual-killed", kill_at="3:1")
    faults = [json.loads(line) for line in open(ray_runs / "contextual-killed" / "faults.jsonl")]
    assert [(f["step"], f["rank"]) for f in faults] == [(3, 1)]
    assert "resumed from step 2" in proc.stdout
    assert_same_weights(final_weights(ray_runs / "contextual-killed"), final_weights(contextual_reference), atol=1e-6)


def test_a_two_worker_contextual_checkpoint_resumes_on_one_worker(contextual_reference, rqvae_file, ray_runs):
    copy_checkpoint(contextual_reference, ray_runs / "contextual-elastic", 4)
    proc = short_contextual_run(rqvae_file, ray_runs, "contextual-elastic", workers=1)
    assert "resumed from step 4 (universal, 1 workers)" in proc.stdout
    summary = json.load(open(ray_runs / "contextual-elastic" / "summary.json"))
    assert summary["workers"] == 1 and summary["steps"] == STEPS and summary["loss_last_step"] > 0


def test_export_of_a_contextual_run_is_what_the_run_consolidated(contextual_reference, tmp_path):
    """rqscale.export gathers the 2 ranks' ZeRO-3 shards of the newest checkpoint into the file rqscale.sample reads."""
    proc = subprocess.run([sys.executable, "-m", "rqscale.export", str(contextual_reference), "--out", str(tmp_path / "rqtransformer.pt")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_same_weights(final_weights(tmp_path), final_weights(contextual_reference), atol=0)

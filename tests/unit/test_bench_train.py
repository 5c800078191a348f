"""`python -m rqscale.bench train` on the debug stage-2 shapes, 1 warm-up + 1 timed step per loop.

In a subprocess: the benchmark makes a 1-rank process group, sets DeepSpeed's environment and changes
malloc settings for its process, none of which should leak into the test session."""
import json
import subprocess
import sys

import pytest
import torch

from rqscale.bench import official as baseline
from rqscale.bench.common import interleaved
from rqscale.bench.train import MasterWeights, report
from rqscale.config import load
from rqscale.models import RQTransformer
from tests.conftest import DEBUG_STAGE2, REPO


@pytest.mark.slow
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
    assert "official" not in r  # no baseline asked for
    assert "not measured here" in report(r)  # without recovery_s
    assert lines[0].startswith("train  config=")  # the report first: no framework lines
    assert r["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")  # --device auto
    for noise in ("FutureWarning", "CUDA_HOME", "built successfully"):
        assert noise not in done.stderr and noise not in done.stdout, noise


@pytest.mark.slow
def test_a_text_config_is_timed_beside_its_class_twin():
    done = subprocess.run([sys.executable, "-m", "rqscale.bench", "train", "--config", DEBUG_STAGE2, "--warmup", "1",
                           "--repeats", "2", "--allocators", "retained", "--no-autocast", "stage2.model.condition=text",
                           "stage2.model.text_length=16", "stage2.model.text_vocab=512"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    c = r["text_vs_class"]
    assert r["condition"] == "text" and r["text_length"] == 16
    assert c["text"]["gflop_per_sample"] > c["class"]["gflop_per_sample"] and c["flop_ratio"] > 1.0
    for name in ("text", "class"):
        assert len(c[name]["step_times_s"]) == 2 and 0 < c[name]["mfu"] < 1.5
    assert c["cost_ratio"] == c["text"]["step_s"] / c["class"]["step_s"]
    assert "text step / class step: measured" in done.stdout and "FLOPs predict" in done.stdout


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


# ---- the comparison with the authors' model (--official DIR): the logic, without their code ----------

def _fake_official(root, patched: bool):
    """DIR/rqvae/models/rqtransformer/ shaped like the authors' package; its configs.py has the instance
    dataclass default that Python 3.11 refuses unless `patched`."""
    pkg = root / "rqvae" / "models" / "rqtransformer"
    pkg.mkdir(parents=True)
    for init in (root / "rqvae", root / "rqvae" / "models"):
        (init / "__init__.py").write_text("")
    default = "field(default_factory=Block)" if patched else "Block()"
    (pkg / "configs.py").write_text("from dataclasses import dataclass, field\n@dataclass\nclass Block:\n    n: int = 1\n"
                                    f"@dataclass\nclass RQTransformerConfig:\n    block: Block = {default}\n")
    (pkg / "transformers.py").write_text("class RQTransformer:\n    pass\n")
    (pkg / "__init__.py").write_text("from .transformers import RQTransformer\n")
    return str(root)


def _forget_rqvae():
    for name in [n for n in sys.modules if n == "rqvae" or n.startswith("rqvae.")]:
        del sys.modules[name]


def test_official_dir_errors_are_one_line_and_name_what_is_wanted(tmp_path):
    for path, words in ((str(tmp_path / "missing"), "not a directory"), (str(tmp_path), "has no rqvae/models")):
        with pytest.raises(baseline.BaselineError) as e:
            baseline.import_official(path)
        assert "\n" not in str(e.value) and words in str(e.value) and "authors' rqvae/ package" in str(e.value)
    _forget_rqvae()
    try:
        with pytest.raises(baseline.BaselineError) as e:
            baseline.import_official(_fake_official(tmp_path / "unpatched", patched=False))
        assert "\n" not in str(e.value) and "field(default_factory=...)" in str(e.value)
        _forget_rqvae()
        model_cls, config_cls = baseline.import_official(_fake_official(tmp_path / "patched", patched=True))
        assert model_cls.__name__ == "RQTransformer" and config_cls().block.n == 1
        assert str(tmp_path / "patched") not in sys.path  # the import leaves sys.path as it was
        with pytest.raises(baseline.BaselineError, match="different 'rqvae' package"):
            baseline.import_official(_fake_official(tmp_path / "other", patched=True))
    finally:
        _forget_rqvae()


def test_official_cli_refuses_a_bad_directory_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rqscale.bench", "train", "--official", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "not a directory" in done.stderr, done.stderr


def test_interleaved_timing_rotates_the_first_contender_and_cycles_batches():
    calls = []
    steps = {name: (lambda n: lambda batch, i: calls.append((n, batch, i)))(name) for name in "abc"}
    times = interleaved(steps, {"a": [0, 1], "b": [0, 1], "c": [7]}, warmup=1, repeats=3)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert [n for n, _, _ in calls[3:]] == list("abc" + "bca" + "cab")
    assert [(b, i) for n, b, i in calls if n == "a"] == [(0, 0), (1, 1), (0, 2), (1, 3)]


def test_dropout_settings_and_set_dropout_reach_every_dropout():
    cfg = load(DEBUG_STAGE2, [], check_files=False)
    assert baseline._settings(cfg) == [("dropout 0", None)]  # the debug config has none: one setting
    cfg = load(DEBUG_STAGE2, ["stage2.model.resid_dropout=0.1", "stage2.model.attn_dropout=0.1"], check_files=False)
    assert baseline._settings(cfg) == [("dropout 0/0.1", None), ("dropout 0", 0.0)]
    r = cfg.rqvae
    model = RQTransformer(cfg.stage2.model, tuple(r.code_shape), r.num_codes, r.code_dim)
    baseline.set_dropout(model, 0.25)
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    attn = [m.attn_dropout for m in model.modules() if hasattr(m, "attn_dropout")]
    assert drops and attn and set(drops) == {0.25} and set(attn) == {0.25}
    assert baseline.official_config(cfg)["head"]["n_layer"] == cfg.stage2.model.depth_layers


def test_gemm_floor_gives_each_contenders_time_beyond_the_matrix_products_and_the_ceiling():
    rates = lambda plain, official: {n: {"step_s": s, "images_per_s": 32 / s} for n, s in (("plain", plain), ("official", official))}  # noqa: E731
    c = {"dir": "/x", "params": {"rqscale": 1e6, "official": 1e6},
         "dropout 0.1": {"rates": rates(2.0, 2.4), "vs_official": {"plain": 1.2}},
         "dropout 0": {"rates": rates(1.9, 2.0), "vs_official": {"plain": 2.0 / 1.9}}}
    baseline.gemm_floor(c, flops_per_step=600e9, peak=400e9)  # 1.5 s of matrix products
    assert c["gemm_floor_s"] == pytest.approx(1.5)
    assert c["dropout 0.1"]["beyond_floor_s"] == pytest.approx({"plain": 0.5, "official": 0.9})
    assert c["dropout 0.1"]["ceiling_vs_official"] == pytest.approx(1.6)
    assert c["dropout 0"]["ceiling_vs_official"] == pytest.approx(2.0 / 1.5)
    text = "\n".join(baseline.report_lines(c, {"plain": "plain", "official": "authors"}))
    assert "1500 ms" in text and "plain 500, authors 900" in text and "1.60x the authors'" in text
    assert "torch.autocast bf16" in text  # the CPU recipe
    c.update(recipe=baseline.GPU_RECIPE, gemm_floor_s=0.0123)  # a GPU's step: milliseconds to a tenth
    text = "\n".join(baseline.report_lines(c, {"plain": "plain", "official": "authors"}))
    assert "fp16 autocast + GradScaler" in text and "(12.3 ms)" in text


# ---- the GPU's side of the timing (--device), its logic checked on this machine ----------------------

def test_bench_device_is_refused_in_one_line_where_the_engine_cannot_follow(monkeypatch):
    from rqscale.bench.train import DeviceError, bench_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    assert bench_device("auto") == torch.device("cpu") and bench_device("cpu") == torch.device("cpu")
    for name, words in (("cuda", "sees no CUDA GPU"), ("bogus", "not a device"), ("meta", "cpu or cuda, not meta")):
        with pytest.raises(DeviceError) as e:
            bench_device(name)
        assert "\n" not in str(e.value) and words in str(e.value), name
    current = []  # a machine with one: auto and cuda take it (and make it current); cpu is refused
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert bench_device("auto") == torch.device("cuda", 0) and bench_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="engine takes GPU 0 .LOCAL_RANK.*CUDA_VISIBLE_DEVICES=1"):
        bench_device("cuda:1")  # the engine would be on GPU 0, the plain loop on GPU 1
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert bench_device("cuda") == torch.device("cuda", 1) and bench_device("cuda:1") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", i) for i in (0, 0, 1, 1)]
    with pytest.raises(DeviceError, match="CUDA_VISIBLE_DEVICES"):
        bench_device("cpu")


def test_cli_refuses_a_gpu_the_machine_lacks_in_one_line():
    env = {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, whatever the machine has
    done = subprocess.run([sys.executable, "-m", "rqscale.bench", "train", "--device", "cuda"],
                          capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "sees no CUDA GPU" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "rqscale.bench", "train", "--config", "configs/debug/dq_bench.yaml",
                           "--device", "cuda"], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert done.returncode == 2 and done.stdout == ""  # the DQ comparison's plain step stays on the CPU: not ignored silently
    assert done.stderr.strip().count("\n") == 0 and "CPU only; drop --device cuda" in done.stderr, done.stderr


def test_timed_gpu_steps_wait_for_their_kernels(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))
    steps = {name: (lambda n: lambda batch, i: events.append((n, i)))(name) for name in "ab"}
    cuda = torch.device("cuda", 0)
    times = interleaved(steps, {"a": [0], "b": [0]}, warmup=1, repeats=2, device=cuda)
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}
    timed = events[2:]  # after the warm-up round: every timed step between two synchronisations
    assert timed == [("sync", cuda), ("a", 1), ("sync", cuda), ("sync", cuda), ("b", 1), ("sync", cuda),
                     ("sync", cuda), ("b", 2), ("sync", cuda), ("sync", cuda), ("a", 2), ("sync", cuda)]
    events.clear()
    interleaved(steps, {"a": [0], "b": [0]}, warmup=0, repeats=1)  # CPU: no synchronisation
    assert [e for e in events if e[0] == "sync"] == []


def test_bench_inputs_and_models_follow_the_device(tmp_path):
    from rqscale.bench.train import bench_config, make_batches, plain_trainer

    meta = torch.device("meta")  # any device but the CPU: nothing here may stay behind on the host
    cfg = bench_config(DEBUG_STAGE2, str(tmp_path))
    batches = make_batches(cfg, count=2, device=meta)
    assert {t.device for b in batches for t in b.values()} == {meta}
    codes = baseline.official_batches(cfg, batches)
    assert {t.device for b in codes for t in b.values()} == {meta} and codes[0]["codes"].shape[1:] == (8, 8, 4)
    trainer, _ = plain_trainer(cfg, "bf16", meta)
    assert {p.device for p in trainer.task.model.parameters()} == {meta}
    assert {p.dtype for p in trainer.task.model.parameters()} == {torch.bfloat16}


def test_the_authors_forward_runs_their_autocast_on_gpu_and_bf16_autocast_on_cpu():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, codes, aux, cond=None, amp=False):
            seen.append((amp, torch.is_autocast_enabled("cpu")))
            return codes

    codes, cond = torch.zeros(2, 3), torch.zeros(2, 1)
    baseline._official_forward(Recorder(), None, codes, cond, torch.device("cpu"))
    baseline._official_forward(Recorder(), None, codes, cond, torch.device("cuda", 0))
    assert seen == [(False, True), (True, False)]  # CPU: outer bf16 autocast; GPU: their own (amp=True) alone


def test_the_peak_is_timed_on_products_big_enough_for_the_device():
    from rqscale.bench.train import peak_shapes

    flops = lambda shapes: max(2 * m * k * n for m, k, n in shapes)  # noqa: E731
    assert flops(peak_shapes(torch.device("cuda", 0))) >= 2 * 8192 ** 3  # ~1.4 ms on an H100: launches do not count
    assert flops(peak_shapes(torch.device("cpu"))) == 2 * 2048 ** 3

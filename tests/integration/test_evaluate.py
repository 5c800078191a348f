"""`python -m rqscale.evaluate` end to end on the demo's models (trained on scikit-learn's digits) against
the demo's digit shards, with a small fixed TorchScript feature extractor in place of Inception
(whose weights cannot be downloaded here): samples through Ray tasks, the RQ-VAE's per-depth rFID,
and the CLIP score of a text-conditional model with a tiny local CLIP."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from rqscale.evaluate import main
from rqscale.eval.features import INCEPTION_FILE
from tests.conftest import REPO
from tests.integration.test_text_sampling import build_text_checkpoint
from tests.unit.test_fid import save_small_extractor

CAPTIONS = [f"a handwritten digit {w}" for w in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's shards (data_prep.demo) and the small extractor."""
    from data_prep.demo import build

    root = tmp_path_factory.mktemp("evaluate")
    build(str(root / "demo"))
    return {"digits": str(root / "demo" / "digits" / "manifest.json"), "extractor": save_small_extractor(root / "small.pt"),
            "cache": str(root / "cache"), "root": root}


def evaluate(*args, timeout=600):
    # One OpenMP thread: on debug-sized models each op is tiny, and a second thread that is not
    # scheduled at once (a busy 2-core machine) stalls every op; Ray's workers run with one anyway.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "rqscale.evaluate", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def finite(report, *keys):
    return all(isinstance(report[k], float) and math.isfinite(report[k]) for k in keys)


def test_samples_through_ray_against_demo_shards(trained_stage2, demo, tmp_path):
    checkpoint = str(trained_stage2[2] / "rqtransformer.pt")
    common = ["samples", "--checkpoint", checkpoint, "--reference", demo["digits"], "--num-samples", "200", "--class-balanced",
              "--feature-extractor", demo["extractor"], "--cache-dir", demo["cache"], "--chunk-size", "100", "--top-k", "64"]
    proc = evaluate(*common, "--workers", "2", "--out", str(tmp_path / "ray.json"))
    ray_report = json.loads((tmp_path / "ray.json").read_text())
    print(proc.stdout, json.dumps({k: ray_report[k] for k in ("fid", "is", "is_std", "precision", "recall", "seconds")}))
    assert finite(ray_report, "fid", "is", "precision", "recall") and ray_report["ray"] and ray_report["chunks"] == 2
    assert ray_report["num_samples"] == 200 and ray_report["reference"]["count"] == 1797 and not ray_report["reference"]["cache_hit"]
    assert 0 <= ray_report["precision"] <= 1 and 0 <= ray_report["recall"] <= 1 and ray_report["is"] >= 1
    assert "fid" in proc.stdout
    evaluate(*common, "--local", "--speed-batches", "4", "8", "--out", str(tmp_path / "local.json"))  # same seed and chunks, here
    local_report = json.loads((tmp_path / "local.json").read_text())
    assert local_report["reference"]["cache_hit"] and not local_report["ray"]
    assert [row["batch"] for row in local_report["speed"]] == [4, 8] and local_report["speed"][0]["seconds_per_image"] > 0
    # Each chunk's samples depend only on (seed, chunk index): where it ran does not matter.
    assert local_report["fid"] == pytest.approx(ray_report["fid"], rel=1e-6) and local_report["precision"] == ray_report["precision"]


def test_recon_per_depth_rfid(trained_stage1, demo, tmp_path):
    rqvae = str(trained_stage1[2] / "rqvae.pt")
    evaluate("recon", "--rqvae", rqvae, "--reference", demo["digits"], "--num-images", "400", "--feature-extractor",
             demo["extractor"], "--local", "--chunk-size", "200", "--out", str(tmp_path / "recon.json"))
    report = json.loads((tmp_path / "recon.json").read_text())
    print(json.dumps({k: report[k] for k in ("rfid_depth", "mse_depth", "codebook_usage")}))
    rfid, mse = report["rfid_depth"], report["mse_depth"]
    assert len(rfid) == 4 and all(math.isfinite(v) and v >= 0 for v in rfid) and report["num_images"] == 400
    # Coarse to fine (Table A.2): each added code lowers the error of every reconstruction. The rFID of
    # the 300-step debug RQ-VAE is flat across depths with this small extractor (measured 22.46, 22.59,
    # 23.06, 23.08 on 400 digits; a random pixel projection gives the same picture), so only "does not
    # grow much" is asserted for it; on ImageNet with Inception it falls 100.86 -> 4.73.
    assert all(a > b for a, b in zip(mse, mse[1:])) and report["rfid"] == rfid[-1]
    assert rfid[-1] < 1.25 * rfid[0]


@pytest.fixture(scope="module")
def text_model(demo):
    """A randomly initialised text-conditional checkpoint with its BPE tokenizer, and a tiny CLIP
    (random weights, a character-level tokenizer) saved with save_pretrained: nothing downloaded."""
    root = demo["root"] / "text"
    root.mkdir()
    checkpoint = build_text_checkpoint(root, CAPTIONS, vocab_size=60)
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    return checkpoint, str(root / "captions.txt"), save_tiny_clip(root / "clip")


def save_tiny_clip(out) -> str:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out.mkdir()
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {t: i for i, t in enumerate([*letters, *(c + "</w>" for c in letters), "<|startoftext|>", "<|endoftext|>"])}
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    special = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab["<|endoftext|>"]}
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=40, **special),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(str(out))
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(out))
    return str(out)


def test_clip_score_of_a_text_model(text_model, tmp_path):
    checkpoint, captions, clip_dir = text_model
    evaluate("clip", "--checkpoint", checkpoint, "--captions", captions, "--clip-model", clip_dir, "--num-samples", "6",
             "--local", "--out", str(tmp_path / "clip.json"))
    report = json.loads((tmp_path / "clip.json").read_text())
    assert finite(report, "clip_score", "clip_cosine") and report["clip_score"] >= 0 and report["num_samples"] == 6
    assert report["clip_score"] == pytest.approx(100 * max(report["clip_cosine"], 0.0))  # torchmetrics' convention


def test_fid_and_clip_score_of_caption_conditioned_samples(text_model, demo, tmp_path):
    """One samples run of a text model against the validation shards: FID (here with the small extractor)
    and Table 3's CLIP score of the same caption-conditioned samples."""
    checkpoint, captions, clip_dir = text_model
    evaluate("samples", "--checkpoint", checkpoint, "--captions", captions, "--clip-model", clip_dir, "--num-samples", "20",
             "--reference", demo["digits"], "--num-reference", "200", "--feature-extractor", demo["extractor"],
             "--cache-dir", demo["cache"], "--local", "--chunk-size", "10", "--out", str(tmp_path / "t2i.json"))
    report = json.loads((tmp_path / "t2i.json").read_text())
    assert finite(report, "fid", "clip_cosine", "clip_score") and report["num_samples"] == 20
    assert -1.0 <= report["clip_cosine"] <= 1.0


def test_clip_score_of_a_samples_npz_reads_its_captions(text_model, demo, tmp_path):
    """rqscale.sample's samples.npz of a text model carries each image's caption: the CLIP score of it
    needs no --captions."""
    checkpoint, captions, clip_dir = text_model
    proc = subprocess.run([sys.executable, "-m", "rqscale.sample", "--checkpoint", checkpoint, "--captions", captions,
                           "--out", str(tmp_path / "s")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    evaluate("samples", "--samples-npz", str(tmp_path / "s" / "samples.npz"), "--clip-model", clip_dir,
             "--feature-extractor", demo["extractor"], "--out", str(tmp_path / "c.json"))
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["num_samples"] == 10 and finite(report, "clip_cosine")


def run_main(capsys, *args) -> tuple:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_bad_arguments_exit_2_naming_the_flag(trained_stage2, demo, tmp_path, monkeypatch, capsys):
    checkpoint, out = str(trained_stage2[2] / "rqtransformer.pt"), str(tmp_path / "r.json")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code, err = run_main(capsys, "samples", "--checkpoint", "missing.pt", "--num-samples", "10", "--out", out)
    assert code == 2 and INCEPTION_FILE in err and "--inception-weights" in err  # before the checkpoint is even looked at
    ext = ["--feature-extractor", demo["extractor"]]
    cases = [(["samples", "--checkpoint", checkpoint, "--num-samples", "10", "--workers", "0"], "--workers"),
             (["samples", "--checkpoint", checkpoint, "--num-samples", "10"], "--class-balanced"),
             (["samples", "--checkpoint", checkpoint, "--num-samples", "10", "--class-balanced", "--top-p", "0"], "--top-p"),
             (["samples", "--checkpoint", checkpoint, "--class-balanced"], "--num-samples"),
             (["samples", "--checkpoint", checkpoint, "--num-samples", "10", "--class-balanced", "--reference", "nope.json"], "--reference"),
             (["clip", "--checkpoint", checkpoint, "--num-samples", "2", "--clip-model", str(tmp_path / "noclip")], "noclip"),
             (["recon", "--rqvae", str(tmp_path / "none.pt"), "--reference", demo["digits"]], "--rqvae-config"),
             (["samples", "--samples-npz", str(tmp_path / "s.npz"), "--draft-steps", "8"], "--draft-steps: Draft-and-Revise flags apply"),
             (["samples", "--checkpoint", checkpoint, "--num-samples", "10", "--class-balanced", "--draft-steps", "8"],
              "--draft-steps: this flag needs a contextual checkpoint")]
    for args, flag in cases:
        code, err = run_main(capsys, *args, *(ext if args[0] != "clip" else []), "--out", out)
        assert code == 2 and flag in err and "Traceback" not in err, (args, err)


def test_a_contextual_checkpoint_reports_its_drafts_and_table_4_speeds(demo, tmp_path):
    """Supplement Table 3's two columns (drafts, revised) from one sampling pass, and Table 4's speeds."""
    from tests.integration.test_contextual_sampling import DEBUG_CONTEXTUAL, random_checkpoint

    checkpoint = random_checkpoint(tmp_path / "ctx.pt", DEBUG_CONTEXTUAL)
    proc = evaluate("samples", "--checkpoint", checkpoint, "--reference", demo["digits"], "--num-reference", "200",
                    "--num-samples", "40", "--class-balanced", "--feature-extractor", demo["extractor"], "--cache-dir",
                    demo["cache"], "--chunk-size", "20", "--local", "--draft-steps", "4", "--speed-batches", "4",
                    "--out", str(tmp_path / "ctx.json"))
    report = json.loads((tmp_path / "ctx.json").read_text())
    drafts = report["drafts"]
    assert finite(report, "fid", "is", "precision", "recall") and finite(drafts, "fid", "is", "precision", "recall")
    assert drafts["num_samples"] == report["num_samples"] == 40 and drafts["fid"] != report["fid"]
    assert "drafts: fid" in proc.stdout
    schedule = report["draft_and_revise"]  # what both columns were drawn with: --draft-steps over the checkpoint's
    assert (schedule["draft_steps"], schedule["revise_steps"], schedule["revise_iterations"], schedule["draft_strategy"]) == (4, 2, 2, "random")
    samplers = [row["sampler"] for row in report["speed"]]
    assert samplers == ["ar (same width)"] + [f"draft-and-revise T_draft {t}" for t in (8, 32, 64)]
    assert all(row["seconds_per_image"] > 0 for row in report["speed"]) and report["speed"][3]["paper_vs_ar"] == 0.13 / 0.04

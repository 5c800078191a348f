"""Text-conditional sampling end to end: a BPE tokenizer file, a consolidated checkpoint, the CLI."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from rqscale.config import load
from rqscale.data.text import CaptionTokenizer
from rqscale.models import RQVAE, RQTransformer
from rqscale.sampling.checkpoint import save_consolidated
from tests.conftest import DEBUG_STAGE2, REPO

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CAPTIONS = [f"a handwritten digit {w}" for w in WORDS] + [f"the digit {w} written by hand" for w in WORDS]


def build_text_checkpoint(root, captions, vocab_size: int = 80, *overrides) -> str:
    """A randomly initialised text-conditional debug model and a BPE tokenizer trained on `captions`,
    saved as the consolidated checkpoint rqscale.sample reads (root/text.pt)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]"]))
    tokenizer.save(str(root / "tokenizer.json"))
    cfg = load(DEBUG_STAGE2, ["stage2.model.condition=text", f"stage2.model.text_vocab={tokenizer.get_vocab_size()}",
                              "stage2.model.text_length=8", f"stage2.tokenizer={root / 'tokenizer.json'}", *overrides],
               check_files=False)
    torch.manual_seed(0)
    rqvae = RQVAE(cfg.rqvae)
    model = RQTransformer(cfg.stage2.model, tuple(cfg.rqvae.code_shape), cfg.rqvae.num_codes, cfg.rqvae.code_dim)
    model.codebook.copy_(rqvae.quantizer.codebook)
    return save_consolidated(str(root / "text.pt"), cfg, rqvae, model)


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    return build_text_checkpoint(root, CAPTIONS), root


def test_caption_tokens_are_padded_to_length(text_checkpoint):
    tok = CaptionTokenizer(str(text_checkpoint[1] / "tokenizer.json"), 8)
    ids = tok.encode("A handwritten digit seven")
    assert ids.shape == (8,) and int(ids[-1]) == tok.pad_id and tok.tokenizer.decode(ids.tolist()).startswith("a handwritten")
    long = "the digit seven written by hand the digit seven written by hand"
    assert tok.encode(long).tolist() == tok.ids(long)[:8]  # cut as the reference cuts: the first tokens stay


def run_cli(tmp_path, checkpoint, *args, count=("--num-samples", "2")):
    return subprocess.run([sys.executable, "-m", "rqscale.sample", "--checkpoint", checkpoint, "--out", str(tmp_path / "out"),
                           *count, *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_text_sampling_cli(text_checkpoint, tmp_path):
    proc = run_cli(tmp_path, text_checkpoint[0], "--text", "a handwritten digit seven")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "out" / "samples.npz")["images"].shape == (2, 32, 32, 3)


def test_rejection_sampling_needs_class_labels(text_checkpoint, tmp_path):
    (tmp_path / "clf.pt").write_bytes(b"")
    proc = run_cli(tmp_path, text_checkpoint[0], "--text", "a seven", "--classifier", str(tmp_path / "clf.pt"))
    assert proc.returncode == 2 and "class-conditional" in proc.stderr and "Traceback" not in proc.stderr


def test_a_long_caption_is_cut_as_training_cuts_it_with_a_warning(text_checkpoint, tmp_path):
    proc = run_cli(tmp_path, text_checkpoint[0], "--text", "the digit seven written by hand " * 3)
    assert proc.returncode == 0, proc.stderr
    assert "warning: caption 'the digit seven" in proc.stderr and "reads its first 8, as training does" in proc.stderr


def test_a_caption_file_gives_one_image_per_line_in_order(text_checkpoint, tmp_path):
    lines = ["a handwritten digit seven", "", "the digit two written by hand", "a handwritten digit zero"]
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    proc = run_cli(tmp_path, text_checkpoint[0], "--captions", str(tmp_path / "captions.txt"), count=())
    assert proc.returncode == 0, proc.stderr
    out = np.load(tmp_path / "out" / "samples.npz")
    assert out["images"].shape == (3, 32, 32, 3) and list(out["captions"]) == [line for line in lines if line]
    assert sorted(p.name for p in (tmp_path / "out").glob("sample_*.png")) == [f"sample_{i:05d}.png" for i in range(3)]


@pytest.mark.parametrize("content, count, message", [
    ("", (), "holds no caption"),
    ("\n  \n", (), "holds no caption"),
    ("a seven\na two\n", ("--num-samples", "3"), "--num-samples 3 differs from the 2 captions"),
])
def test_bad_caption_files_are_refused(text_checkpoint, tmp_path, content, count, message):
    (tmp_path / "captions.txt").write_text(content)
    proc = run_cli(tmp_path, text_checkpoint[0], "--captions", str(tmp_path / "captions.txt"), count=count)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_guidance_with_the_null_caption_runs(text_checkpoint, tmp_path):
    proc = run_cli(tmp_path, text_checkpoint[0], "--text", "a handwritten digit seven", "--cfg-scale", "3.0")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "out" / "samples.npz")["images"].shape == (2, 32, 32, 3)


def test_guidance_needs_a_model_trained_with_caption_dropout(tmp_path_factory, tmp_path):
    root = tmp_path_factory.mktemp("text-no-dropout")
    checkpoint = build_text_checkpoint(root, CAPTIONS, 80, "stage2.model.cond_dropout=0", "stage2.sampling.cfg_scale=1.0")
    proc = run_cli(tmp_path, checkpoint, "--text", "a handwritten digit seven", "--cfg-scale", "2.0")
    assert proc.returncode == 2 and "--cfg-scale needs a model trained with stage2.model.cond_dropout > 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_clip_reranking_keeps_the_candidate_clip_rates_highest(text_checkpoint, tmp_path):
    """Best of 8 through the CLI equals: the same 8 candidates per caption drawn plainly (captions repeated
    in place, same seed), scored here by the evaluation's CLIP cosine, the highest kept."""
    from rqscale.eval.clip_score import clip_cosines
    from tests.integration.test_evaluate import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    captions = ["a handwritten digit seven", "the digit two written by hand", "a handwritten digit zero"]
    (tmp_path / "three.txt").write_text("\n".join(captions) + "\n")
    (tmp_path / "each8.txt").write_text("\n".join(c for c in captions for _ in range(8)) + "\n")
    # Batches of 5 candidates: groups of 8 straddle batches, which re-ranking reduces as they complete.
    ranked = run_cli(tmp_path / "ranked", text_checkpoint[0], "--captions", str(tmp_path / "three.txt"), "--rerank", "8",
                     "--clip-model", clip, "--batch-size", "5", count=())
    plain = run_cli(tmp_path / "plain", text_checkpoint[0], "--captions", str(tmp_path / "each8.txt"), "--batch-size", "5",
                    count=())
    assert ranked.returncode == 0 and plain.returncode == 0, ranked.stderr + plain.stderr
    candidates = np.load(tmp_path / "plain" / "out" / "samples.npz")["images"]
    chosen = np.load(tmp_path / "ranked" / "out" / "samples.npz")["images"]
    scores = clip_cosines(clip, torch.from_numpy(candidates).permute(0, 3, 1, 2), [c for c in captions for _ in range(8)], "cpu")
    best = scores.view(3, 8).argmax(dim=1)
    assert (best != 0).any()  # the first candidate is not simply kept
    for i, b in enumerate(best.tolist()):
        assert np.array_equal(chosen[i], candidates[8 * i + b])


@pytest.mark.parametrize("args, message", [
    (("--rerank", "4"), "--rerank N needs --clip-model DIR"),
    (("--rerank", "0"), "--rerank must be >= 1"),
    (("--rerank", "2", "--clip-model", "/nonexistent"), "CLIP model not found: '/nonexistent'"),
])
def test_bad_rerank_requests_are_refused(text_checkpoint, tmp_path, args, message):
    proc = run_cli(tmp_path, text_checkpoint[0], "--text", "a seven", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr

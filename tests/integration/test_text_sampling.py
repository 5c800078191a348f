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


def build_text_checkpoint(root, captions, vocab_size: int = 80) -> str:
    """A randomly initialised text-conditional debug model and a BPE tokenizer trained on `captions`,
    saved as the consolidated checkpoint rqscale.sample reads (root/text.pt)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]"]))
    tokenizer.save(str(root / "tokenizer.json"))
    cfg = load(DEBUG_STAGE2, ["stage2.model.condition=text", f"stage2.model.text_vocab={tokenizer.get_vocab_size()}",
                              "stage2.model.text_length=8", f"stage2.tokenizer={root / 'tokenizer.json'}"], check_files=False)
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
    with pytest.raises(ValueError, match="more than the model's 8"):
        tok.encode("the digit seven written by hand the digit seven written by hand")


def run_cli(tmp_path, checkpoint, *args):
    return subprocess.run([sys.executable, "-m", "rqscale.sample", "--checkpoint", checkpoint, "--out", str(tmp_path / "out"),
                           "--num-samples", "2", *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_text_sampling_cli(text_checkpoint, tmp_path):
    proc = run_cli(tmp_path, text_checkpoint[0], "--text", "a handwritten digit seven")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "out" / "samples.npz")["images"].shape == (2, 32, 32, 3)


def test_rejection_sampling_needs_class_labels(text_checkpoint, tmp_path):
    (tmp_path / "clf.pt").write_bytes(b"")
    proc = run_cli(tmp_path, text_checkpoint[0], "--text", "a seven", "--classifier", str(tmp_path / "clf.pt"))
    assert proc.returncode == 2 and "class-conditional" in proc.stderr and "Traceback" not in proc.stderr


def test_text_too_long_is_a_clear_error(text_checkpoint, tmp_path):
    proc = run_cli(tmp_path, text_checkpoint[0], "--text", "the digit seven written by hand " * 3)
    assert proc.returncode == 2 and "more than the model's 8" in proc.stderr and "Traceback" not in proc.stderr

"""The caption tokenizer trained on the demo captions: round trip, fixed length 32 with padding."""
import pytest
import subprocess
import sys

from rqscale.data.bundled import DIGIT_WORDS
from data_prep.tokenizer import train_tokenizer
from rqscale.data.text import CaptionTokenizer
from tests.conftest import REPO

CAPTIONS = [f"a handwritten digit {w}" for w in DIGIT_WORDS] + [f"A photo of the number {w}, written by hand." for w in DIGIT_WORDS]


def test_round_trip_and_padding(tmp_path):
    tok = train_tokenizer(CAPTIONS)
    encoded = tok.encode("A handwritten digit seven")
    assert len(encoded.ids) == 32 and encoded.ids[-1] == tok.token_to_id("[PAD]")
    assert tok.decode(encoded.ids, skip_special_tokens=True) == "a handwritten digit seven"
    long = tok.encode(" ".join(CAPTIONS))
    assert len(long.ids) == 32  # truncated to 32 for training
    tok.save(str(tmp_path / "tokenizer.json"))
    caption = CaptionTokenizer(str(tmp_path / "tokenizer.json"), 32)
    ids = caption.encode("a handwritten digit seven")
    assert ids.tolist() == encoded.ids


@pytest.mark.slow
def test_cli_from_demo_manifest(tmp_path):
    from data_prep.demo import build

    build(str(tmp_path / "demo"))
    proc = subprocess.run([sys.executable, "-m", "data_prep.tokenizer", "--captions", str(tmp_path / "demo" / "digits" / "manifest.json"),
                           "--out", str(tmp_path / "tokenizer.json")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tok = CaptionTokenizer(str(tmp_path / "tokenizer.json"), 32)
    assert tok.tokenizer.decode(tok.encode("a handwritten digit nine").tolist(), skip_special_tokens=True) == "a handwritten digit nine"

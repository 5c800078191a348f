"""Text-conditional data: captions tokenized on the host (cut like the reference, padded with [PAD]),
from the bundled digits and from caption shards; samples without a caption skipped and counted; a text
config that cannot train (no caption shards, a tokenizer too big for the model) refused before Ray."""
import json
import subprocess
import sys

import pytest
import torch

from data_prep.demo import digit_items
from data_prep.shards import write_shards
from data_prep.tokenizer import train_tokenizer
from rqscale.config import ConfigError, load
from rqscale.data.bundled import class_captions
from rqscale.data.pipeline import RankBatches, check_text_setup, picture_captions
from rqscale.data.reader import ResumableLoader, load_shards
from rqscale.data.storage import join
from rqscale.data.text import CaptionTokenizer
from tests.conftest import REPO

DEBUG_TEXT = f"{REPO}/configs/debug/stage2_text.yaml"
TOKENIZER = f"{REPO}/configs/debug/digits_tokenizer.json"


def text_cfg(*overrides):
    return load(DEBUG_TEXT, [f"stage2.tokenizer={TOKENIZER}", *overrides], check_files=False)


def digits(n: int, drop_caption_of=()):
    for i, item in enumerate(digit_items()):
        if i == n:
            return
        yield {k: v for k, v in item.items() if not (k == "txt" and i in drop_caption_of)}


@pytest.fixture(scope="module")
def caption_shards(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("captions"))
    write_shards(digits(96), out, "digits", max_samples=32)
    return join(out, "manifest.json")


def test_the_debug_tokenizer_is_data_prep_s_tokenizer_of_the_digit_captions():
    rebuilt = json.loads(train_tokenizer(class_captions("digits")).to_str())
    committed = json.load(open(TOKENIZER))
    assert rebuilt["model"]["vocab"] == committed["model"]["vocab"] and rebuilt["model"]["merges"] == committed["model"]["merges"]


def test_long_captions_keep_their_first_tokens():
    tok = CaptionTokenizer(TOKENIZER, 8)
    long = "a handwritten digit seven " * 3
    assert tok.token_count(long) > 8
    assert tok.encode(long).tolist() == tok.ids(long)[:8]
    short = tok.encode("A handwritten digit seven")
    assert short.tolist()[4:] == [tok.pad_id] * 4 and tok.pad_id == 0  # the null caption is all [PAD]
    assert torch.equal(tok.encode_batch([long, "a handwritten digit seven"]), torch.stack([tok.encode(long), short]))


def test_bundled_digits_give_each_image_its_class_caption():
    cfg = text_cfg()
    (batch,) = RankBatches(cfg, 0, 1, 1).next_step()
    tok = CaptionTokenizer(TOKENIZER, 8)
    assert batch["cond"].shape == (32, 8) and batch["cond"].dtype == torch.long
    captions = {tuple(tok.encode(c).tolist()): c for c in class_captions("digits")}
    rows = [captions[tuple(row.tolist())] for row in batch["cond"]]  # KeyError: a row that is no digit caption
    assert len(set(rows)) > 3
    assert picture_captions(cfg) == class_captions("digits")  # the config's picture captions
    assert picture_captions(text_cfg("stage2.sampling.captions=[]")) == class_captions("digits")  # the bundled set's


def test_shards_give_each_image_its_own_caption(caption_shards):
    cfg = text_cfg(f"data.shards={caption_shards}", "train.global_batch=16", "train.micro_batch=16", "stage2.sampling.captions=[]")
    (batch,) = RankBatches(cfg, 0, 1, 1).next_step()
    reference = next(ResumableLoader(load_shards(caption_shards), 16, 0, 1, cfg.run.seed, 32, flip=cfg.data.hflip).epoch_batches())
    assert torch.equal(batch["cond"], CaptionTokenizer(TOKENIZER, 8).encode_batch(reference["txt"]))
    first_shard = [item["txt"] for item in digits(32)]  # write_shards keeps item order; 32 per shard
    assert picture_captions(cfg) == list(dict.fromkeys(first_shard))[:10]


def test_a_sample_without_caption_is_skipped_and_counted_in_a_text_run(tmp_path):
    items = [dict(item, txt="  ") if i == 9 else item for i, item in enumerate(digits(32, drop_caption_of=(3, 17)))]
    write_shards(items, str(tmp_path), "digits", max_samples=32)
    shards = load_shards(join(str(tmp_path), "manifest.json"))
    text = ResumableLoader(shards, 32, 0, 1, 0, 32, max_bad_samples=5, need_text=True)
    batch = next(text.epoch_batches())
    assert len(batch["txt"]) == 29 and text.bad_samples_total == 3
    # An empty caption would tokenize to all [PAD]: the null caption guidance learns. It is bad data here.
    assert sorted(reason for _, reason in text.bad_examples) == ["empty caption", "no 'txt' field", "no 'txt' field"]
    plain = ResumableLoader(shards, 32, 0, 1, 0, 32)  # a class run does not need captions
    assert len(next(plain.epoch_batches())["keys"]) == 32 and plain.bad_samples_total == 0


def test_shards_without_captions_are_refused_naming_data_shards(tmp_path):
    items = ({k: v for k, v in item.items() if k != "txt"} for item in digits(8))
    write_shards(items, str(tmp_path), "digits", max_samples=8)
    cfg = text_cfg(f"data.shards={tmp_path}/manifest.json")
    with pytest.raises(ConfigError, match="config key 'data.shards': the shards .* carry no captions"):
        check_text_setup(cfg)


def test_a_tokenizer_bigger_than_the_model_vocabulary_is_refused():
    with pytest.raises(ConfigError, match="'stage2.model.text_vocab': the tokenizer .* has 307 entries but the model embeds 300"):
        check_text_setup(text_cfg("stage2.model.text_vocab=300"))


def test_a_text_config_without_its_tokenizer_file_is_refused(tmp_path):
    (tmp_path / "rqvae.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="config key 'stage2.tokenizer': tokenizer file '.*missing.json' does not exist"):
        load(DEBUG_TEXT, [f"stage2.rqvae_checkpoint={tmp_path}/rqvae.pt", f"stage2.tokenizer={tmp_path}/missing.json"])


def test_the_cli_refuses_caption_less_shards_before_ray_starts(tmp_path):
    items = ({k: v for k, v in item.items() if k != "txt"} for item in digits(8))
    write_shards(items, str(tmp_path), "digits", max_samples=8)
    (tmp_path / "rqvae.pt").write_bytes(b"")  # never read: the refusal comes first
    proc = subprocess.run([sys.executable, "-m", "rqscale.train", DEBUG_TEXT, f"data.shards={tmp_path}/manifest.json",
                           f"stage2.rqvae_checkpoint={tmp_path}/rqvae.pt", f"run.output_dir={tmp_path}/runs"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "config key 'data.shards'" in proc.stderr and "Traceback" not in proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr and not (tmp_path / "runs").exists()


def test_long_captions_are_named_a_few_at_a_time(capsys):
    from rqscale.sampling.generate import warn_long_captions

    tok = CaptionTokenizer(TOKENIZER, 8)
    long = [f"a handwritten digit {w} " * 3 for w in ("one", "two", "three", "four", "five")]
    warn_long_captions(["a handwritten digit one", *long, long[0]], tok)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and all("reads its first 8, as training does" in line for line in lines[:3])
    assert lines[3] == "rqscale: warning: 2 more captions are longer than 8 tokens and are cut the same way"


def test_a_tokenizer_that_is_no_tokenizer_file_is_one_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a tokenizers JSON file"):
        CaptionTokenizer(str(tmp_path / "tokenizer.json"), 8)

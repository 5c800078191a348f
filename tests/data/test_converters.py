"""data_prep converters on real images: local and S3 outputs, manifests, resume, bad input."""
import hashlib
import os
import json
import subprocess
import sys

import pytest
import webdataset as wds

from data_prep.shards import write_shards
from rqscale.data.storage import filesystem, join, read_bytes
from tests.conftest import REPO
from tests.data.conftest import SYNSETS


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def manifest(out: str) -> dict:
    return json.loads(read_bytes(join(out, "manifest.json")))


def check_shards(out: str, m: dict) -> list:
    """Every shard's bytes match the manifest's checksum; returns all samples read back."""
    samples = []
    for shard in m["shards"]:
        data = read_bytes(join(out, shard["name"]))
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
        url = join(out, shard["name"])
        local = url if not url.startswith("s3://") else None
        if local is None:
            local = f"/tmp/{shard['sha256']}.tar"
            open(local, "wb").write(data)
        got = list(wds.WebDataset(local, shardshuffle=False))
        assert len(got) == shard["samples"]
        samples += got
    return samples


def test_imagenet_train_dir_local(imagenet_layout, tmp_path):
    proc = run("data_prep.imagenet", "--train-dir", str(imagenet_layout / "train"), "--out", str(tmp_path), "--max-samples", "5")
    assert proc.returncode == 0, proc.stderr
    m = manifest(str(tmp_path))
    assert m["samples"] == 12 and len(m["shards"]) == 3 and m["complete"] and m["skipped"] == []
    samples = check_shards(str(tmp_path), m)
    labels = {s["__key__"]: int(s["cls"]) for s in samples}
    assert labels["n01440764_n01440764_0"] == 0 and labels["n01484850_n01484850_3"] == 2  # sorted synsets -> 0..
    first_shard = [int(s["cls"]) for s in samples[:5]]
    assert len(set(first_shard)) > 1  # items are shuffled before sharding: shards mix classes


def test_imagenet_tar_of_tars_to_s3_skips_bad_members(imagenet_layout, s3_bucket):
    out = f"{s3_bucket}/imagenet/train"
    proc = run("data_prep.imagenet", "--train-tar", str(imagenet_layout / "ILSVRC2012_img_train.tar"), "--out", out)
    assert proc.returncode == 0, proc.stderr
    m = manifest(out)
    assert m["samples"] == 12
    reasons = sorted(s["reason"] for s in m["skipped"])
    assert len(reasons) == 2 and "undecodable image" in reasons[0] and "unsafe member name" in reasons[1]
    assert {int(s["cls"]) for s in check_shards(out, m)} == {0, 1, 2}


@pytest.mark.parametrize("labels", ["csv", "ground_truth"])
def test_imagenet_val_labels(imagenet_layout, tmp_path, labels):
    extra = ["--val-labels", str(imagenet_layout / "LOC_val_solution.csv")] if labels == "csv" else \
        ["--val-labels", str(imagenet_layout / "ground_truth.txt"), "--id-synsets", str(imagenet_layout / "id_synsets.txt")]
    proc = run("data_prep.imagenet", "--val-dir", str(imagenet_layout / "val"), "--out", str(tmp_path), *extra)
    assert proc.returncode == 0, proc.stderr
    samples = check_shards(str(tmp_path), manifest(str(tmp_path)))
    assert [int(s["cls"]) for s in sorted(samples, key=lambda s: s["__key__"])] == [0, 1, 2, 0, 1, 2]


def test_missing_label_file_and_bad_path_are_clear(imagenet_layout, tmp_path):
    proc = run("data_prep.imagenet", "--val-dir", str(imagenet_layout / "val"), "--val-labels", str(tmp_path / "nope.csv"), "--out", str(tmp_path))
    assert proc.returncode == 2 and "nope.csv" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("data_prep.folder", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "missing" in proc.stderr


def test_demo_set_to_s3(s3_bucket):
    out = f"{s3_bucket}/demo"
    proc = run("data_prep.demo", "--out", out)
    assert proc.returncode == 0, proc.stderr
    digits = manifest(join(out, "digits"))
    assert digits["samples"] == 1797 and len(digits["shards"]) == 8
    photos = check_shards(join(out, "photos"), manifest(join(out, "photos")))
    assert len(photos) == 8 and all(s["txt"].startswith(b"a photo") for s in photos)


class Crash(Exception):
    """Stands for a converter process dying mid-run."""


def numbered_items(n: int, crash_at: int = -1):
    for i in range(n):
        if i == crash_at:
            raise Crash()
        yield {"__key__": f"s{i:04d}", "txt": f"sample {i}", "cls": i % 3} if i % 17 else None  # every 17th unreadable


def test_resume_after_crash_gives_identical_shards(tmp_path):
    clean = write_shards(numbered_items(100), str(tmp_path / "clean"), "t", max_samples=10)
    with pytest.raises(Crash):
        write_shards(numbered_items(100, crash_at=57), str(tmp_path / "resumed"), "t", max_samples=10)
    partial = manifest(str(tmp_path / "resumed"))
    assert not partial["complete"] and 0 < len(partial["shards"]) < len(clean.shards)
    resumed = write_shards(numbered_items(100), str(tmp_path / "resumed"), "t", max_samples=10)
    assert [s["sha256"] for s in resumed.shards] == [s["sha256"] for s in clean.shards]
    assert resumed.skipped == clean.skipped and len(clean.skipped) == 6  # items 0, 17, ..., 85
    assert filesystem(str(tmp_path)).ls(str(tmp_path / "resumed"), detail=False).__len__() == len(clean.shards) + 1


@pytest.fixture(scope="module")
def cc3m_layout(tmp_path_factory):
    """A caption TSV of 6 rows; 4 images downloaded (row 2 missing, row 5 corrupt); and the same
    as img2dataset webdataset output."""
    import io
    import tarfile

    from tests.data.conftest import real_jpegs

    root = tmp_path_factory.mktemp("cc3m")
    captions = [f"a photo of digit number {i}" for i in range(6)]
    (root / "train.tsv").write_text("".join(f"{c}\thttp://example.invalid/{i}.jpg\n" for i, c in enumerate(captions)))
    os.makedirs(root / "images" / "00000")
    jpegs = real_jpegs(6, seed=3)
    for i in (0, 1, 3, 4):
        (root / "images" / "00000" / f"{i:09d}.jpg").write_bytes(jpegs[i])
    (root / "images" / "00000" / f"{5:09d}.jpg").write_bytes(jpegs[5][:150])
    os.makedirs(root / "wds")
    with tarfile.open(root / "wds" / "00000.tar", "w") as tar:
        for i in (0, 1, 3):
            for ext, data in (("jpg", jpegs[i]), ("txt", captions[i].encode())):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return root


def test_cc3m_folder_with_tokens(cc3m_layout, tmp_path):
    from data_prep.tokenizer import train_tokenizer

    tok = train_tokenizer([f"a photo of digit number {i}" for i in range(6)])
    tok.save(str(tmp_path / "tok.json"))
    proc = run("data_prep.cc3m", "--tsv", str(cc3m_layout / "train.tsv"), "--images", str(cc3m_layout / "images"),
               "--tokenizer", str(tmp_path / "tok.json"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    m = manifest(str(tmp_path / "out"))
    assert m["samples"] == 4 and sorted(s["reason"].split(" ")[0] for s in m["skipped"]) == ["missing", "undecodable"]
    samples = check_shards(str(tmp_path / "out"), m)
    first = sorted(samples, key=lambda s: s["__key__"])[0]
    assert first["txt"] == b"a photo of digit number 0" and len(json.loads(first["json"])) == 32


def test_cc3m_img2dataset_output(cc3m_layout, s3_bucket):
    out = f"{s3_bucket}/cc3m"
    proc = run("data_prep.cc3m", "--img2dataset", str(cc3m_layout / "wds"), "--out", out)
    assert proc.returncode == 0, proc.stderr
    samples = check_shards(out, manifest(out))
    assert sorted(s["txt"] for s in samples) == [b"a photo of digit number 0", b"a photo of digit number 1", b"a photo of digit number 3"]


def test_folder_keeps_equal_file_names_in_different_classes(tmp_path):
    from tests.data.conftest import real_jpegs

    jpegs = real_jpegs(2, seed=5)
    for cls, data in zip(("cat", "dog"), jpegs):
        os.makedirs(tmp_path / "root" / cls)
        (tmp_path / "root" / cls / "1.jpg").write_bytes(data)
    proc = run("data_prep.folder", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    samples = check_shards(str(tmp_path / "out"), manifest(str(tmp_path / "out")))
    assert sorted((s["__key__"], int(s["cls"])) for s in samples) == [("cat_1", 0), ("dog_1", 1)]


def test_cc3m_tsv_header_is_not_a_caption(tmp_path):
    from data_prep.cc3m import read_tsv

    (tmp_path / "t.tsv").write_text("caption\turl\nfirst caption\thttp://x.invalid/0\nsecond\thttp://x.invalid/1\n")
    assert read_tsv(str(tmp_path / "t.tsv")) == ["first caption", "second"]

"""rqscale's shards are webdataset shards, both ways: the webdataset library reads what
data_prep.shards writes (its TarWriter writes the very same bytes), and rqscale's reader trains from
shards written by webdataset.ShardWriter and by img2dataset once data_prep.index has indexed them,
locally and on S3. Damaged or missing shards get one line naming the file."""
import io
import json
import tarfile
import warnings

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_prep.demo import digit_items
from data_prep.index import index, main
from data_prep.shards import Manifest, _encode, tar_bytes, write_shards
from rqscale.data.reader import ResumableLoader, load_shards
from rqscale.data.storage import join, write_bytes_atomic


def first_digits(n: int) -> list:
    items = []
    for item in digit_items():
        if len(items) == n:
            break
        items.append(item)
    return items


@pytest.fixture(scope="module")
def digits():
    return first_digits(40)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def one_epoch(manifest_url: str, global_batch: int = 16) -> dict:
    """{key: (caption or None, label or None)} over one epoch of rqscale's reader; asserts each key comes once."""
    loader = ResumableLoader(load_shards(manifest_url), global_batch, 0, 1, seed=5, resolution=32, flip=False)
    seen = {}
    for batch in loader.epoch_batches():
        assert batch["images"].shape[1:] == (3, 32, 32)
        for i, key in enumerate(batch["keys"]):
            assert key not in seen, f"{key} delivered twice"
            seen[key] = (batch["txt"][i] if "txt" in batch else None, int(batch["cond"][i]) if "cond" in batch else None)
    return seen


def test_webdataset_reads_rqscale_shards(tmp_path, digits):
    out = str(tmp_path)
    manifest = write_shards(digits, out, "digits", max_samples=16)
    urls = [join(out, s["name"]) for s in manifest.shards]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = list(wds.WebDataset(urls, shardshuffle=False))
        decoded = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("__key__", "jpg", "cls", "txt"))
    assert not [w for w in caught if "shardshuffle" in str(w.message)]  # (1.0.2 also leaks its file handles: ResourceWarning)
    assert [s["__key__"] for s in raw] == [d["__key__"] for d in digits]
    for sample, (key, image, label, caption), item in zip(raw, decoded, digits):
        assert sample["jpg"] == item["jpg"] and np.array_equal(image, pixels(item["jpg"]))
        assert (key, label, caption) == (item["__key__"], item["cls"], item["txt"])


def test_rqscale_tars_are_what_webdataset_tarwriter_writes(digits):
    """Why data_prep.shards keeps its own tar code: with deterministic settings TarWriter writes the same
    bytes (also pax headers for long names), but it reports no sample offsets."""
    items = digits[:3] + [{"__key__": "dir/" + "long" * 40, "txt": "a caption", "json": {"ids": [1, 2]}}]
    buffer = io.BytesIO()
    with wds.TarWriter(buffer, user="", group="", mode=0o644, mtime=0, encoder=False) as writer:
        for item in items:
            writer.write({k: v if k == "__key__" else _encode(v) for k, v in item.items()})
    assert buffer.getvalue() == tar_bytes(items)[0]


def test_index_reproduces_the_offsets_write_shards_stores(tmp_path, digits):
    out = str(tmp_path)
    written = write_shards(digits + [dict(digits[0], __key__="x" * 150)], out, "digits", max_samples=16)
    indexed = index(out, out=join(out, "indexed.json"), dataset="digits")
    assert indexed.shards == written.shards  # names, counts, sizes, sha256, offsets (a pax header included)
    assert Manifest.load(join(out, "indexed.json")).shards == written.shards


def test_rqscale_trains_from_webdataset_shardwriter_output(tmp_path, digits):
    with wds.ShardWriter(str(tmp_path / "wds-%06d.tar"), maxcount=16, verbose=0) as sink:
        for item in digits:
            sink.write(item)  # webdataset's default encoder: cls int -> b"7", txt str -> UTF-8
    manifest = index(str(tmp_path))
    assert [s["samples"] for s in manifest.shards] == [16, 16, 8] and manifest.dataset == tmp_path.name
    seen = one_epoch(str(tmp_path / "manifest.json"))
    assert seen == {d["__key__"]: (d["txt"], d["cls"]) for d in digits}
    by_pattern = index(str(tmp_path / "wds-{000000..000002}.tar"), dataset=tmp_path.name)  # webdataset's brace notation
    assert by_pattern.shards == manifest.shards


def img2dataset_dir(root, digits, shards: int = 2) -> dict:
    """img2dataset's webdataset output: NNNNN.tar (KEY.jpg, KEY.txt, KEY.json; 9-digit keys with gaps where
    downloads failed) beside NNNNN.parquet and NNNNN_stats.json. Returns {key: caption}."""
    root.mkdir(exist_ok=True)
    captions = {}
    per_shard = -(-len(digits) // shards)
    for s in range(shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for j, item in enumerate(digits[s * per_shard:(s + 1) * per_shard]):
                key = f"{s:05d}{3 * j:04d}"
                meta = {"url": f"https://example.com/{key}.jpg", "caption": item["txt"], "key": key, "status": "success"}
                for ext, data in (("jpg", item["jpg"]), ("txt", item["txt"].encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 1700000000
                    tar.addfile(info, io.BytesIO(data))
                captions[key] = item["txt"]
        (root / f"{s:05d}.parquet").write_bytes(b"PAR1 not a real table PAR1")
        (root / f"{s:05d}_stats.json").write_text(json.dumps({"count": per_shard, "successes": per_shard}))
    return captions


def test_rqscale_trains_from_img2dataset_output(tmp_path, digits):
    captions = img2dataset_dir(tmp_path / "cc", digits[:30])
    manifest = index(str(tmp_path / "cc"))
    assert [s["name"] for s in manifest.shards] == ["00000.tar", "00001.tar"] and manifest.samples == 30
    assert one_epoch(str(tmp_path / "cc" / "manifest.json"), global_batch=8) == {k: (c, None) for k, c in captions.items()}


def test_index_and_train_from_s3(tmp_path, s3_bucket, digits):
    captions = img2dataset_dir(tmp_path / "cc", digits[:30])
    prefix = f"{s3_bucket}/interop/cc"
    for path in sorted((tmp_path / "cc").iterdir()):
        write_bytes_atomic(join(prefix, path.name), path.read_bytes())
    local = index(str(tmp_path / "cc"))
    remote = index(prefix)
    assert remote.shards == local.shards
    assert one_epoch(join(prefix, "manifest.json"), global_batch=8) == {k: (c, None) for k, c in captions.items()}
    assert index(f"{prefix}/0000[01].tar", dataset="cc").shards == local.shards  # a glob on S3


def test_a_tar_of_a_directory_indexes_past_its_directory_entry(tmp_path, digits):
    """`tar cf shard.tar photos/` stores a directory entry before the files; webdataset skips it, and so
    do the sample ranges; the keys keep the directory, as webdataset's do."""
    folder = tmp_path / "src" / "photos"
    folder.mkdir(parents=True)
    for item in digits[:5]:
        (folder / f"{item['__key__']}.jpg").write_bytes(item["jpg"])
        (folder / f"{item['__key__']}.txt").write_text(item["txt"])
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "photos.tar", "w") as tar:
        tar.add(folder, arcname="photos")
    index(str(tmp_path / "shards"))
    expected = {f"photos/{d['__key__']}": (d["txt"], None) for d in digits[:5]}
    assert one_epoch(str(tmp_path / "shards" / "manifest.json"), global_batch=4) == expected
    assert [s["__key__"] for s in wds.WebDataset(str(tmp_path / "shards" / "photos.tar"), shardshuffle=False)] == list(expected)


def test_dotted_directories_and_upper_case_extensions_read_as_webdataset_reads_them(tmp_path, digits):
    """Keys and fields by webdataset's rule (key = name up to the first dot of the basename, extension
    lower-cased), in the indexer and in rqscale's reader alike."""
    members = {}
    for d in digits[:3]:
        members[f"v1.2/{d['__key__']}.JPG"] = d["jpg"]
        members[f"v1.2/{d['__key__']}.txt"] = d["txt"].encode()
    (tmp_path / "shard.tar").write_bytes(_tar_of(members))
    index(str(tmp_path))
    expected = {f"v1.2/{d['__key__']}": (d["txt"], None) for d in digits[:3]}
    assert one_epoch(str(tmp_path / "manifest.json"), global_batch=3) == expected
    assert [s["__key__"] for s in wds.WebDataset(str(tmp_path / "shard.tar"), shardshuffle=False)] == list(expected)


def run_cli(capsys, *args) -> tuple:
    """Exit code and the error lines (progress lines, one per shard indexed, left out)."""
    code = main(list(args))
    return code, [line for line in capsys.readouterr().err.splitlines() if not line.startswith("index ")]


def test_no_tar_files_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "00000.parquet").write_bytes(b"PAR1")
    (tmp_path / "00000_stats.json").write_text("{}")
    assert run_cli(capsys, "--shards", str(tmp_path)) == (2, [f"data_prep.index: error: no .tar shards in '{tmp_path}'"])
    code, lines = run_cli(capsys, "--shards", str(tmp_path / "missing"))
    assert code == 2 and len(lines) == 1 and "not found" in lines[0] and "missing" in lines[0]


def _damaged(kind: str, digits) -> bytes:
    good = tar_bytes(digits[:4])[0]
    if kind == "not a tar":
        return b"this is not a tar archive\n" * 100
    if kind == "gzip":
        import gzip
        return gzip.compress(good)
    if kind == "cut in a member":
        return good[:len(good) // 2]
    if kind == "cut in a header":
        offsets = tar_bytes(digits[:4])[1]
        return good[:offsets[2] + 100]
    if kind == "bad header":
        offsets = tar_bytes(digits[:4])[1]
        return good[:offsets[2]] + b"\x01" * 512 + good[offsets[2] + 512:]
    if kind == "no samples":
        return _tar_of({"README": b"", "photos/": None})
    if kind == "entry between samples":
        return _tar_of({"a.jpg": b"1", "sub/": None, "b.jpg": b"2"})
    return b""  # "empty"


def _tar_of(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type, info.size = (tarfile.DIRTYPE, 0) if data is None else (tarfile.REGTYPE, len(data))
            tar.addfile(info, io.BytesIO(data or b""))
    return buffer.getvalue()


@pytest.mark.parametrize("kind, says", [("not a tar", "not a readable uncompressed tar file (invalid header)"),
                                        ("gzip", "not a readable uncompressed tar file"), ("empty", "(empty file)"),
                                        ("cut in a member", "(unexpected end of data)"), ("cut in a header", "unreadable tar header at byte"),
                                        ("bad header", "unreadable tar header at byte"), ("no samples", "holds no samples"),
                                        ("entry between samples", "member 'sub' is not a sample file")])
def test_damaged_shard_is_one_line_naming_the_file(tmp_path, capsys, digits, kind, says):
    (tmp_path / "a-000000.tar").write_bytes(tar_bytes(digits[4:8])[0])
    (tmp_path / "a-000001.tar").write_bytes(_damaged(kind, digits))
    code, lines = run_cli(capsys, "--shards", str(tmp_path))
    assert code == 2 and len(lines) == 1, lines
    assert f"'{tmp_path / 'a-000001.tar'}'" in lines[0] and says in lines[0], lines[0]
    assert not (tmp_path / "manifest.json").exists()

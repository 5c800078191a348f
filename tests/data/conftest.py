"""A real S3 endpoint on loopback (moto's threaded server) and ImageNet-style fixtures of real images."""
import io
import os
import socket
import tarfile

import numpy as np
import pytest

from data_prep.images import encode_jpeg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_bucket():
    """s3://rqscale-test on a moto server at 127.0.0.1, with dummy credentials in the environment."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="rqscale-test")
    yield "s3://rqscale-test"
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


SYNSETS = ["n01440764", "n01443537", "n01484850"]


def real_jpegs(count: int, seed: int = 0) -> list:
    """JPEG bytes of real digit images (scikit-learn), 32x32 RGB."""
    from rqscale.data import digits

    images, _ = digits(32)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), count, replace=False)
    return [encode_jpeg(((images[i].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)) for i in picks]


@pytest.fixture(scope="session")
def imagenet_layout(tmp_path_factory):
    """train/<synset>/*.JPEG (4 each), the same as a tar of per-synset tars, and val + labels."""
    root = tmp_path_factory.mktemp("imagenet")
    jpegs = real_jpegs(12 + 6)
    for s, synset in enumerate(SYNSETS):
        os.makedirs(root / "train" / synset)
        for j in range(4):
            (root / "train" / synset / f"{synset}_{j}.JPEG").write_bytes(jpegs[4 * s + j])
    os.makedirs(root / "val")
    rows = []
    for i in range(6):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        (root / "val" / f"{name}.JPEG").write_bytes(jpegs[12 + i])
        rows.append(f"{name},{SYNSETS[i % 3]} 1 2 3 4")
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    (root / "ground_truth.txt").write_text("\n".join(str(i % 3 + 1) for i in range(6)) + "\n")
    (root / "id_synsets.txt").write_text("\n".join(SYNSETS) + "\n")
    _tar_of_tars(root / "train", root / "ILSVRC2012_img_train.tar")
    return root


def _tar_of_tars(train_dir, path) -> None:
    with tarfile.open(path, "w") as outer:
        for synset in SYNSETS:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as inner:
                for f in sorted(os.listdir(train_dir / synset)):
                    inner.add(train_dir / synset / f, arcname=f)
                if synset == SYNSETS[0]:  # one hostile member and one truncated JPEG
                    _add(inner, "../../escape.JPEG", (train_dir / synset / f).read_bytes())
                    _add(inner, "truncated.JPEG", (train_dir / synset / f).read_bytes()[:200])
            _add(outer, f"{synset}.tar", buffer.getvalue())


def _add(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

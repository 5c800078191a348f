"""Input-pipeline throughput (issue: data at scale), all measured in one run on this machine.

1. Images/s per loader worker (in-process) for decode + crop to 256 + flip of ~500x375 JPEGs made
   from the bundled photos: rqscale's reader vs torchvision ImageFolder + PIL on the same JPEGs.
   The reader's batches are uint8 (mapped to [-1, 1] later, on the device); the baseline's are
   float tensors, as torchvision's ToTensor + Normalize make them in the worker.
2. The same reader over a moto S3 server on 127.0.0.1: S3 overhead.
3. Stage-2 input batches/s from latent shards vs encoding images on the fly with the debug RQ-VAE.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time

import numpy as np
import torch

from rqscale.bench.common import machine


def make_jpegs(count: int, seed: int = 0) -> list:
    """(label, JPEG bytes) of 500x375 crops of the bundled photos, quality 90."""
    from PIL import Image

    from data_prep.images import encode_jpeg
    from rqscale.data.bundled import photo_arrays

    photos, rng, out = photo_arrays(), np.random.default_rng(seed), []
    for i in range(count):
        label = i % len(photos)
        photo = Image.fromarray(photos[label]).resize((640, 480))
        x, y = int(rng.integers(0, 140)), int(rng.integers(0, 105))
        out.append((label, encode_jpeg(np.asarray(photo)[y : y + 375, x : x + 500], quality=90)))
    return out


def _items(jpegs):
    for i, (label, data) in enumerate(jpegs):
        yield {"__key__": f"img{i:06d}", "jpg": data, "cls": label}


def _image_folder(jpegs, root: str) -> None:
    for i, (label, data) in enumerate(jpegs):
        os.makedirs(os.path.join(root, f"class{label}"), exist_ok=True)
        with open(os.path.join(root, f"class{label}", f"img{i:06d}.jpg"), "wb") as f:
            f.write(data)


def reader_rate(manifest: str, resolution: int = 256, batch: int = 32) -> float:
    from rqscale.data.reader import ResumableLoader, load_shards

    loader = ResumableLoader(load_shards(manifest), batch, 0, 1, seed=0, resolution=resolution)
    start, n = time.perf_counter(), 0
    for b in loader.epoch_batches():
        n += len(b["keys"])
    return n / (time.perf_counter() - start)


def imagefolder_rate(root: str, batch: int = 32) -> float:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.Resize(256), T.RandomCrop(256), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    loader = torch.utils.data.DataLoader(ImageFolder(root, tf), batch_size=batch, shuffle=True, num_workers=0)
    start, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return n / (time.perf_counter() - start)


def s3_server():
    """moto's S3 server in its own process on 127.0.0.1 (in-process it would compete for our GIL)."""
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(port)
    # A loopback test endpoint with moto's dummy credentials; nothing leaves this machine.
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
    return server


def _wait_for(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"moto server did not start on port {port}")


def stage2_rates(root: str, steps: int = 20) -> tuple:
    """(batches/s from latent shards, batches/s encoding images on the fly), 32 digits per batch."""
    from data_prep.demo import digit_items
    from data_prep.latents import encode_shard
    from data_prep.shards import write_shards
    from rqscale.config import load, to_yaml
    from rqscale.data.reader import ResumableLoader, load_shards
    from rqscale.data.transforms import to_unit_range
    from rqscale.models import RQVAE
    from rqscale.tasks import Stage2Task

    cfg = load("configs/debug/stage2.yaml", check_files=False)
    rqvae = RQVAE(cfg.rqvae).eval()
    torch.save(rqvae.state_dict(), os.path.join(root, "rqvae.pt"))
    write_shards(digit_items(), os.path.join(root, "digits"), "digits", max_samples=256)
    shards = load_shards(os.path.join(root, "digits", "manifest.json"))
    entries = [encode_shard(to_yaml(cfg), os.path.join(root, "rqvae.pt"), s, os.path.join(root, "latents"), i) for i, s in enumerate(shards)]
    with open(os.path.join(root, "latents", "manifest.json"), "w") as f:
        json.dump({"latent_shape": [8, 8, cfg.rqvae.code_dim], "shards": entries}, f)
    task = Stage2Task(cfg, rqvae)

    def rate(manifest: str) -> float:
        loader = ResumableLoader(load_shards(manifest), 32, 0, 1, seed=0, resolution=32)
        start, n = time.perf_counter(), 0
        for batch in loader.epoch_batches():
            if "images" in batch:
                batch["images"] = to_unit_range(batch["images"])
            task.targets(task.latents(batch))
            n += 1
            if n == steps:
                break
        return n / (time.perf_counter() - start)

    return rate(os.path.join(root, "latents", "manifest.json")), rate(os.path.join(root, "digits", "manifest.json"))


def run(count: int = 400) -> dict:
    from data_prep.shards import write_shards

    torch.set_num_threads(1)  # one loader worker = one core
    jpegs = make_jpegs(count)
    with tempfile.TemporaryDirectory() as root:
        write_shards(_items(jpegs), os.path.join(root, "shards"), "bench", max_samples=100)
        _image_folder(jpegs, os.path.join(root, "folder"))
        ours, baseline = 0.0, 0.0
        for _ in range(3):  # alternate, best of three each: this machine is noisy
            ours = max(ours, reader_rate(os.path.join(root, "shards", "manifest.json")))
            baseline = max(baseline, imagefolder_rate(os.path.join(root, "folder")))
        server = s3_server()
        try:
            write_shards(_items(jpegs), "s3://bench/shards", "bench", max_samples=100)
            remote = reader_rate("s3://bench/shards/manifest.json")
        finally:
            server.terminate()
            server.wait()
        torch.set_num_threads(os.cpu_count() or 1)
        latent_rate, image_rate = stage2_rates(root)
    return {"benchmark": "data", "machine": machine(), "images": count, "reader_images_per_s": ours,
            "imagefolder_images_per_s": baseline, "speedup_vs_imagefolder": ours / baseline,
            "reader_s3_images_per_s": remote, "s3_overhead": ours / remote - 1.0,
            "stage2_latent_batches_per_s": latent_rate, "stage2_onthefly_batches_per_s": image_rate,
            "latent_speedup": latent_rate / image_rate}


def report(r: dict) -> str:
    return (
        f"data  {r['images']} JPEGs of 500x375 from the bundled photos -> decode, crop 256, flip; one worker\n"
        f"  machine: {r['machine']}\n"
        f"  rqscale reader: {r['reader_images_per_s']:.0f} img/s   torchvision ImageFolder+PIL: {r['imagefolder_images_per_s']:.0f} img/s"
        f"   -> {r['speedup_vs_imagefolder']:.2f}x   (goal >= 2x)\n"
        f"  same reader over S3 (moto on 127.0.0.1): {r['reader_s3_images_per_s']:.0f} img/s   overhead {100 * r['s3_overhead']:.0f}%\n"
        f"  stage-2 inputs (32 digits/batch, soft labels): latent shards {r['stage2_latent_batches_per_s']:.1f} batch/s vs "
        f"on-the-fly encoding {r['stage2_onthefly_batches_per_s']:.1f} batch/s -> {r['latent_speedup']:.2f}x\n"
        f"{json.dumps(r)}"
    )

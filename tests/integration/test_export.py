"""Consolidated fp32 export: the weights gathered from a ZeRO-3 checkpoint, loaded into a plain
RQ-Transformer, give the engine's own outputs."""
import pytest
import torch

from rqscale.config import load
from rqscale.data.pipeline import RankBatches
from rqscale.engine import init_distributed
from rqscale.export import export_stage2
from rqscale.sampling.checkpoint import load_consolidated
from rqscale.train.stage2_engine import Stage2Engines
from tests.conftest import DEBUG_STAGE2

pytestmark = pytest.mark.slow


def test_exported_weights_reproduce_engine_outputs(trained_stage1, tmp_path):
    rqvae = trained_stage1[2] / "rqvae.pt"
    cfg = load(DEBUG_STAGE2, [f"stage2.rqvae_checkpoint={rqvae}", "engine.precision=fp32", "train.max_steps=2"])
    init_distributed()
    torch.manual_seed(0)
    engines = Stage2Engines(cfg, 1, torch.device("cpu"))
    data = RankBatches(cfg, 0, 1, 1)
    for step in range(2):  # trained weights, not the initial ones
        engines.step(data.next_step(), step)
    engines.save(str(tmp_path / "ckpt"))
    out = export_stage2(cfg, str(tmp_path / "ckpt"), str(tmp_path / "model.pt"))
    _, _, plain = load_consolidated(out)

    batch = data.next_step()[0]
    codes = engines.task.targets(engines.task.latents(batch))[1]
    engines.task.eval()
    with torch.no_grad():
        engine_logits = engines.engine.module.net(codes, batch["cond"]).logits
        plain_logits = plain(codes, batch["cond"]).logits
    assert torch.allclose(engine_logits, plain_logits, atol=1e-5, rtol=0), float((engine_logits - plain_logits).abs().max())
    assert float(engine_logits.std()) > 0.1  # real logits, not a degenerate output

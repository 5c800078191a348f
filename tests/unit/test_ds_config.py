"""The DeepSpeed config rqscale builds from its schema: what each engine setting turns into."""
from rqscale.config import load
from rqscale.engine.ds_config import ALL_PARAMETERS_PERSIST, deepspeed_config
from tests.conftest import DEBUG_STAGE2

PERSIST = "stage3_param_persistence_threshold"


def _zero(overrides, world_size):
    cfg = load(DEBUG_STAGE2, ["engine.precision=bf16", "train.micro_batch=16", *overrides], check_files=False)
    return deepspeed_config(cfg, world_size, 1.0)["zero_optimization"]


def test_one_rank_zero3_keeps_every_parameter_resident():
    one, two = _zero([], 1), _zero([], 2)
    assert one["stage"] == two["stage"] == 3  # stage 2's default
    assert one[PERSIST] == ALL_PARAMETERS_PERSIST > 3.9e9  # above any parameter, 3.8B model included
    assert one["memory_efficient_linear"] is False  # nothing gathered, so torch's own F.linear
    assert one["reduce_scatter"] is False  # average the one rank's gradient bucket in place, no concatenated copy
    assert PERSIST not in two and "memory_efficient_linear" not in two and "reduce_scatter" not in two  # several ranks: DeepSpeed's defaults
    offloaded = _zero(["engine.offload_params=cpu"], 1)
    assert PERSIST not in offloaded and offloaded["offload_param"]["device"] == "cpu"  # offload needs the partitions
    assert PERSIST not in _zero(["engine.zero_stage=1"], 1)

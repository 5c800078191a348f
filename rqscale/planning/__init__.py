"""The capacity planner behind `python -m rqscale.plan`: parameters, FLOPs, memory and time of any
config on any cluster, without running it.

params.py       meta-device parameter counts
activations.py  activation bytes per sample (analytic for stage 2, measured on meta for stage 1)
memory.py       model states (DeepSpeed's estimators via rqscale/engine/estimate.py) and the micro-batch that fits
speed.py        images/s, epoch and schedule time at an assumed MFU
advice.py       warnings naming the config key that fixes them
report.py       the plan as one dict; text.py formats it
"""
from rqscale.planning.hardware import GPUS
from rqscale.planning.params import stage1_params, stage2_params
from rqscale.planning.report import Cluster, plan
from rqscale.planning.text import format_text

__all__ = ["GPUS", "Cluster", "format_text", "plan", "stage1_params", "stage2_params"]

"""The nnU-Net v1 pretrained download as it was written on 2020-03-31, rebuilt with the real v1 network: the
builder lives in ``benchmarks/common.py`` (shared with the real_size benchmark, which may not import tests/)."""
from benchmarks.common import V1_PLANS_ID as PLANS_ID
from benchmarks.common import V1_TASK as TASK
from benchmarks.common import V1_TRAINER as TRAINER
from benchmarks.common import legacy_checkpoint_bytes, real_generic_unet, write_task008_zip

__all__ = ["PLANS_ID", "TASK", "TRAINER", "legacy_checkpoint_bytes", "real_generic_unet", "write_task008_zip"]

"""nnU-Net v2 trainers for vessel transfer learning."""
from pathlib import Path

EXT_TRAINER_DIR = Path(__file__).resolve().parent / "ext"

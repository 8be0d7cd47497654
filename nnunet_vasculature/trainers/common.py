"""What every trainer of this package shares: the one-line set-up error, the demo schedule and the
skippable final validation. Imports only nnU-Net's base trainer's environment (nothing competition-specific)."""
from __future__ import annotations

import os

import torch

DEMO_ENV = "nnUNet_vasculature_demo_schedule"   # "EPOCHSxITERATIONS", e.g. "6x30"
# "0": skip nnU-Net's end-of-training validation in the demo-length trainers (the demos and benchmarks score
# their own held-out data; in the test suite's quick runs the validation's worker pool costs more than the training)
VALIDATION_ENV = "nnUNet_vasculature_demo_validation"


class TrainerSetupError(SystemExit):
    """A set-up problem of our trainers, reported by stock ``nnUNetv2_train`` as one line on stderr with
    exit code 1 (Python prints a SystemExit's message without a traceback)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def demo_schedule() -> tuple[int, int]:
    """(epochs, iterations per epoch) from ``$nnUNet_vasculature_demo_schedule`` (default 6x30)."""
    value = os.environ.get(DEMO_ENV, "6x30")
    parts = value.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise TrainerSetupError(f"{DEMO_ENV}={value!r}: expected EPOCHSxITERATIONS with positive integers, "
                                f"e.g. 6x30")
    return int(parts[0]), int(parts[1])


class SkippableValidation:
    """Mixin: ``$nnUNet_vasculature_demo_validation=0`` skips nnU-Net's final validation."""

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        if os.environ.get(VALIDATION_ENV, "1") == "0":
            self.print_to_log_file(f"final validation skipped (${VALIDATION_ENV}=0)")
            return
        super().perform_actual_validation(save_probabilities)


class DemoLength(SkippableValidation):
    """Mixin for demo-length trainers: ``$nnUNet_vasculature_demo_schedule`` epochs x iterations (default
    6x30), a fifth as many validation iterations, and the skippable final validation."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        epochs, iters = demo_schedule()
        self.num_epochs, self.num_iterations_per_epoch = epochs, iters
        self.num_val_iterations_per_epoch = max(1, iters // 5)

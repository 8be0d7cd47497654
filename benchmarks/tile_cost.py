"""What one network pass costs and what the two hidden SenNet test kidneys cost on Kaggle's GPUs.

FLOPs of one tile are counted with torch's FlopCounterMode (exact for the convolutions, which are nearly all
of the work); seconds per tile are measured on this CPU. The number of tiles of each hidden test kidney comes
from nnU-Net's own sliding-window steps at the model spacing (50 µm) with step 0.5, the whole plane (an upper
bound: nnU-Net crops to the non-zero box first). The GPU estimate divides the FLOPs by an assumed achieved
throughput: the datasheet peak (T4: 65 TFLOPS FP16 tensor / 8.1 FP32; P100 PCIe 16 GB: 18.7 FP16 / 9.3 FP32)
times an efficiency FRACTION (default 0.3: cuDNN 3D convolutions rarely reach half the peak) — an assumption,
not a measurement; run benchmarks/gpu_run.sh on a lent GPU to replace it.

    .venv/bin/python -m benchmarks tile_cost [--patch 64 192 192] [--efficiency 0.3] [--cpu-repeats 2]

The network is the Task008-size assumption of benchmarks/real_size.py (32 base features, max 320, six stages,
pools [[1,2,2],[2,2,2],[2,2,2],[2,2,2],[1,2,2]], kernels [[1,3,3],[3,3,3]x5]; 30.8 M parameters).
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import record, table

POOLS = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
KERNELS = [[1, 3, 3]] + [[3, 3, 3]] * 5
# (slices, height, width, µm) of the hidden test kidneys (DOMAIN.md section 10 and section 9)
KIDNEYS = {"kidney_5": (2363, 1330, 1598, 50.28), "kidney_6": (1909, 1028, 1257, 63.08)}
MODEL_UM = 50.0
GPUS = {"T4": {"fp16": 65e12, "fp32": 8.1e12}, "P100": {"fp16": 18.7e12, "fp32": 9.3e12}}
BUDGET_H = 9.0


def network() -> torch.nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    return PlainConvUNet(input_channels=1, n_stages=6, features_per_stage=[min(32 * 2 ** i, 320) for i in range(6)],
                         conv_op=torch.nn.Conv3d, kernel_sizes=KERNELS, strides=POOLS, n_conv_per_stage=[2] * 6,
                         num_classes=2, n_conv_per_stage_decoder=[2] * 5, conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)


def tiles(shape: tuple[int, int, int], patch: list[int], step: float = 0.5) -> int:
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    padded = [max(s, p) for s, p in zip(shape, patch)]
    steps = compute_steps_for_sliding_window(padded, patch, step)
    return len(steps[0]) * len(steps[1]) * len(steps[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 192, 192])
    ap.add_argument("--efficiency", type=float, default=0.3, help="achieved fraction of the datasheet peak")
    ap.add_argument("--cpu-repeats", type=int, default=2)
    a = ap.parse_args()
    from torch.utils.flop_counter import FlopCounterMode

    net = network().eval()
    params = sum(p.numel() for p in net.parameters())
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, *a.patch))
    flops = counter.get_total_flops()
    x = torch.randn(1, 1, *a.patch)
    seconds = []
    with torch.inference_mode():
        for _ in range(a.cpu_repeats):
            t = time.perf_counter()
            net(x)
            seconds.append(time.perf_counter() - t)
    cpu_tile = min(seconds)
    print(f"network: {params / 1e6:.1f} M parameters, patch {a.patch}: {flops / 1e12:.3f} TFLOP per tile "
          f"(forward, batch 1); CPU ({torch.get_num_threads()} threads) {cpu_tile:.1f} s per tile "
          f"(best of {a.cpu_repeats}: {', '.join(f'{s:.1f}' for s in seconds)})")

    rows, total, kidney_rows = [], {}, []
    for name, (z, y, x_, um) in KIDNEYS.items():
        shape = tuple(round(n * um / MODEL_UM) for n in (z, y, x_))
        n = tiles(shape, a.patch)
        total[name] = n
        rows.append([name, f"{z}x{y}x{x_} @ {um} µm", "x".join(map(str, shape)), n])
        kidney_rows.append({"kidney": name, "raw": f"{z}x{y}x{x_} @ {um} µm",
                            f"at {MODEL_UM:g} µm": "x".join(map(str, shape)), "tiles (step 0.5)": n})
    print(table(rows, ["kidney", "raw", f"at {MODEL_UM:g} µm", "tiles (step 0.5)"]))
    n_tiles = sum(total.values())
    est, estimate_rows = [], []
    for label, passes, factor in (("1 fold, no TTA", 1, 1.0), ("1 fold, 8x mirroring", 8, 1.0),
                                  ("1 fold, 8x mirroring, nnUNet_compile=1 (assumed 2x)", 8, 0.5),
                                  ("5 folds, 8x mirroring", 40, 1.0)):
        row = [label, f"{n_tiles * passes:,}"]
        figure = {"both hidden kidneys": label, "network passes": n_tiles * passes}
        for gpu, peak in GPUS.items():
            hours = n_tiles * passes * flops / (peak["fp16"] * a.efficiency) * factor / 3600
            row.append(f"{hours:.2f} h" + (" (over budget)" if hours > BUDGET_H else ""))
            figure[f"{gpu} fp16 @ {a.efficiency:g} of peak (h, assumed)"] = hours
        row.append(f"{n_tiles * passes * cpu_tile / 3600:.0f} h")
        figure["this CPU (h)"] = n_tiles * passes * cpu_tile / 3600
        est.append(row)
        estimate_rows.append(figure)
    print(table(est, ["both hidden kidneys", "network passes"] + [f"{g} fp16 @ {a.efficiency:g} of peak"
                                                                  for g in GPUS] + ["this CPU"]))
    record("tile_cost", {"parameters_millions": params / 1e6, "tflop_per_tile": flops / 1e12,
                         "cpu_threads": torch.get_num_threads(), "cpu_seconds_per_tile": cpu_tile,
                         "kidneys": kidney_rows, "estimates": estimate_rows}, a)


if __name__ == "__main__":
    main()

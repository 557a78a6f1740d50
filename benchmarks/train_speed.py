"""CPU speed of the U-Net++ (dsb.models) against segmentation_models_pytorch's UnetPlusPlus.

Measured in one process, side by side:

* **train**: images/s of a full training step (forward, BCE over every head, backward,
  SGD step) at batch 8 of 256x256 RGB: the baseline
  ``smp.UnetPlusPlus(encoder_name="resnet18", encoder_weights=None, classes=3)`` in plain
  fp32 (the project's goal is a CPU recipe at >= 1.5x its images/s), the same smp model
  with bf16 autocast + channels_last (to show what the recipe flags alone give), and dsb
  models: resnet18 with the default decoder (``dec256`` = [256, 128, 64, 32, 16]) and the
  narrow one (``dec128`` = [128, 64, 32, 16, 16]) in fp32 / bf16 autocast / channels_last
  (``CL``) / both, the recipe on 1 thread, and resnet34, efficientnet_b0 and
  mobilenetv3_large_100 encoders in the recipe's precision. The bf16 configs run only
  on a CPU with native bf16 (AVX512-BF16/AMX; ``--bf16 always`` forces them): elsewhere
  ``train.amp: auto`` trains in fp32, bf16 is emulated and slow, and the recipe is timed
  as it trains there, fp32 + channels_last (``dsb resnet18 dec128 CL``).
* **infer**: images/s of eval-mode forward passes (``torch.inference_mode``) of the
  recipe model in "accurate" mode (mean of all heads) and "fast" mode at depth 1..L.

Configs are timed round-robin (every config once per round, after one warm-up step
each) and the best round is reported: on a shared machine other processes steal CPU
time, and interleaving plus best-of keeps the ratios honest; the ``cpu%`` column (process
CPU time / wall time / threads) shows how much of the machine the best round had. GMAC
(multiply-adds of one forward pass of one image, from ``torch.utils.flop_counter``) are
printed beside, as a load-independent measure.

Usage::

    python benchmarks/train_speed.py [--batch 8] [--size 256] [--rounds 2] [--threads 0]
        [--quick] [--bf16 auto|always|never] [--out benchmarks/results/train_speed.json]

About 2.5 minutes on an idle 2-core machine with native bf16; ``--quick`` (batch 2, 128 px, 4 or 5 configs,
1 round) about 10 s. Prints tables; writes JSON.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from _common import finish, parser
from dsb.models.unetpp import DsbUNetPlusPlus
from dsb.device import cpu_has_native_bf16

DEFAULT_DECODER = [256, 128, 64, 32, 16]
SMALL_DECODER = [128, 64, 32, 16, 16]
TARGET_SPEEDUP = 1.5
BASELINE = "smp UnetPlusPlus resnet18 (baseline)"
RECIPE = "dsb resnet18 dec128 bf16+CL"
#: What the recipe trains as on a CPU without native bf16 (``train.amp: auto`` is fp32 there).
RECIPE_FP32 = "dsb resnet18 dec128 CL"


@dataclass
class Case:
    name: str
    make: Callable[[], torch.nn.Module]
    bf16: bool = False
    channels_last: bool = False
    threads: int = 0  # 0: the process setting
    model: Optional[torch.nn.Module] = None
    opt: Optional[torch.optim.Optimizer] = None
    x: Optional[torch.Tensor] = None
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    gmac: float = float("nan")
    params_m: float = float("nan")


def train_cases(quick: bool, bf16: bool) -> list[Case]:
    import segmentation_models_pytorch as smp

    def dsb(encoder: str, decoder: list[int]) -> Callable[[], torch.nn.Module]:
        return lambda: DsbUNetPlusPlus(encoder, decoder_channels=decoder, out_channels=3)

    def smp_unetpp() -> torch.nn.Module:
        return smp.UnetPlusPlus(encoder_name="resnet18", encoder_weights=None, classes=3)

    cases = [
        Case(BASELINE, smp_unetpp),
        Case("smp UnetPlusPlus resnet18 bf16+CL", smp_unetpp, bf16=True, channels_last=True),
        Case("dsb resnet18 dec256", dsb("resnet18", DEFAULT_DECODER)),
        Case("dsb resnet18 dec256 bf16+CL", dsb("resnet18", DEFAULT_DECODER), bf16=True, channels_last=True),
        Case("dsb resnet18 dec128", dsb("resnet18", SMALL_DECODER)),
        Case("dsb resnet18 dec128 bf16", dsb("resnet18", SMALL_DECODER), bf16=True),
        Case("dsb resnet18 dec128 CL", dsb("resnet18", SMALL_DECODER), channels_last=True),
        Case(RECIPE, dsb("resnet18", SMALL_DECODER), bf16=True, channels_last=True),
        Case(RECIPE + " 1 thread", dsb("resnet18", SMALL_DECODER), bf16=True, channels_last=True, threads=1),
        Case("dsb resnet34 dec128 bf16+CL", dsb("resnet34", SMALL_DECODER), bf16=True, channels_last=True),
        Case("dsb efficientnet_b0 dec128 bf16+CL", dsb("efficientnet_b0", SMALL_DECODER), bf16=True, channels_last=True),
        Case("dsb mobilenetv3_large_100 dec128 bf16+CL", dsb("mobilenetv3_large_100", SMALL_DECODER), bf16=True, channels_last=True),
    ]
    if quick:
        cases = [c for c in cases if c.name in (BASELINE, "dsb resnet18 dec256", "dsb resnet18 dec128", RECIPE, RECIPE_FP32)]
    if not bf16:
        cases = [c for c in cases if not c.bf16]
    return cases


def count_gmac(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.train()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 3, size, size))
    model.train(was_training)
    return counter.get_total_flops() / 2e9


def train_step(case: Case, x: torch.Tensor) -> tuple[float, float]:
    """One optimiser step; returns (wall seconds, process CPU seconds)."""
    model, opt = case.model, case.opt
    threads = torch.get_num_threads()
    if case.threads:
        torch.set_num_threads(case.threads)
    c0, t0 = time.process_time(), time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case.bf16):
        out = model(x)
        outs = out if isinstance(out, list) else [out]
        zeros = torch.zeros(outs[0].shape)
        loss = sum(F.binary_cross_entropy_with_logits(o.float(), zeros) for o in outs)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.set_num_threads(threads)
    return wall, cpu


def run_train(cases: list[Case], batch: int, size: int, rounds: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(batch, 3, size, size)
    for case in cases:
        torch.manual_seed(0)
        case.model = case.make().train()
        case.params_m = sum(p.numel() for p in case.model.parameters()) / 1e6
        case.gmac = count_gmac(case.model, size)
        if case.channels_last:
            case.model = case.model.to(memory_format=torch.channels_last)
        case.opt = torch.optim.SGD(case.model.parameters(), lr=1e-3, momentum=0.9)
        case.x = x.contiguous(memory_format=torch.channels_last) if case.channels_last else x
        train_step(case, case.x)  # warm-up: allocator, oneDNN primitives
    for r in range(rounds):
        for case in cases:
            wall, cpu = train_step(case, case.x)
            case.times.append(wall)
            case.cpu_times.append(cpu)
            print(f"  round {r + 1}/{rounds}  {case.name:44s} {batch / wall:6.2f} img/s", flush=True)


def run_infer(encoder: str, decoder: list[int], batch: int, size: int, rounds: int, channels_last: bool, bf16: bool):
    torch.manual_seed(0)
    model = DsbUNetPlusPlus(encoder, decoder_channels=decoder).eval()
    x = torch.rand(batch, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    modes = [("accurate", model.depth)] + [("fast", d) for d in range(1, model.depth + 1)]
    times: dict[str, list[float]] = {f"{m} d={d}" if m == "fast" else m: [] for m, d in modes}
    warmup = 2
    for r in range(rounds + warmup):  # the first rounds only warm up
        for (mode, depth), key in zip(modes, times):
            model.set_mode(mode, depth)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                t0 = time.perf_counter()
                model(x)
                dt = time.perf_counter() - t0
            if r >= warmup:
                times[key].append(dt)
    return times


def main() -> int:
    p = parser(__doc__, "train_speed")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="batch 2, 128 px, 4 or 5 configs")
    p.add_argument("--bf16", choices=["auto", "always", "never"], default="auto",
                   help="time the bf16-autocast configs: auto = only on a CPU with native bf16 "
                        "(AVX512-BF16/AMX), where train.amp: auto uses it; elsewhere it is emulated and slow")
    args = p.parse_args()
    if args.quick:
        args.batch, args.size, args.rounds = 2, 128, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    native_bf16 = cpu_has_native_bf16()
    use_bf16 = args.bf16 == "always" or (args.bf16 == "auto" and native_bf16)
    recipe_name = RECIPE if native_bf16 else RECIPE_FP32  # what train.amp: auto trains as here
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} x 3 x {args.size}^2, "
          f"native bf16: {'yes' if native_bf16 else 'no'} (the recipe trains as {recipe_name!r})")

    print("\n== training step (forward + backward + SGD), round-robin ==")
    cases = train_cases(args.quick, use_bf16)
    run_train(cases, args.batch, args.size, args.rounds)
    base = args.batch / min(cases[0].times)
    rows = []
    print(f"\n{'config':46s} {'img/s':>7s} {'x smp':>6s} {'GMAC':>6s} {'params':>7s} {'cpu%':>5s}")
    for case in cases:
        i = min(range(len(case.times)), key=case.times.__getitem__)
        best = args.batch / case.times[i]
        threads = case.threads or torch.get_num_threads()
        # CPU time / (wall x threads): well under 100% means other processes took the cores.
        util = case.cpu_times[i] / (case.times[i] * threads)
        rows.append(
            dict(
                name=case.name, images_per_s=round(best, 3), speedup_vs_smp=round(best / base, 3),
                gmac_fwd_per_image=round(case.gmac, 3), params_m=round(case.params_m, 3),
                step_times_s=[round(t, 3) for t in case.times], cpu_utilisation=round(util, 3),
                bf16=case.bf16, channels_last=case.channels_last, threads=threads,
            )
        )
        print(f"{case.name:46s} {best:7.2f} {best / base:6.2f} {case.gmac:6.2f} {case.params_m:6.2f}M {100 * util:4.0f}%")
    recipe = next((r for r in rows if r["name"] == recipe_name), None)
    if recipe:
        verdict = "meets" if recipe["speedup_vs_smp"] >= TARGET_SPEEDUP else "MISSES"
        print(f"\nrecipe ({recipe_name}): {recipe['speedup_vs_smp']:.2f}x the smp baseline, {verdict} the {TARGET_SPEEDUP}x target")
    else:
        print(f"\nrecipe ({recipe_name}) not timed: it trains in bf16 on this CPU and --bf16 never skipped it")
    for case in cases:  # free memory before the inference section
        case.model = case.opt = None

    print(f"\n== inference (eval, resnet18 dec128, {'bf16 + ' if use_bf16 else ''}channels_last): accurate vs fast ==")
    infer = run_infer("resnet18", SMALL_DECODER, args.batch, args.size, args.rounds, channels_last=True, bf16=use_bf16)
    acc = args.batch / min(infer["accurate"])
    infer_rows = []
    print(f"{'mode':12s} {'img/s':>7s} {'x accurate':>10s}")
    for key, times in infer.items():
        ips = args.batch / min(times)
        infer_rows.append(dict(mode=key, images_per_s=round(ips, 3), speedup_vs_accurate=round(ips / acc, 3)))
        print(f"{key:12s} {ips:7.2f} {ips / acc:10.2f}")

    result = dict(
        benchmark="train_speed",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        batch=args.batch,
        size=args.size,
        rounds=args.rounds,
        target_speedup_vs_smp=TARGET_SPEEDUP,
        recipe=recipe_name,
        native_bf16=native_bf16,
        loadavg_start=load_start,
        loadavg_end=os.getloadavg()[0],
        train=rows,
        infer=infer_rows,
        wall_s=round(time.perf_counter() - t_start, 1),
    )
    print(f"\n{result['wall_s']} s")
    return finish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())

"""Reward training of your own potential with the single-loop Implicit Diffusion optimizer.

The user writes a potential ``V(x, theta)`` -- here a 2-D Gaussian with a learnable mean,
``V(x, theta) = ||x - theta||^2 / 2``, so ``pi_theta = N(theta, I)`` -- and a reward
``R(x)`` -- here ``-||x - target||^2``, which pulls the mass toward ``target``. The loop

    state = langevin.init(potential, theta0, cfg, shape=2)
    state, info = langevin.step(state, potential, reward, cfg)   # repeated

makes ONE Langevin (ULA) step on a population of particles and then ONE torch.optim step
on ``theta`` from the covariance estimate ``grad E[R] = -Cov(R(x), grad_theta V(x, theta))``
(reward values only, never ``grad R``). With ``--kl-weight lam > 0`` the objective is
``E[R] - lam KL(pi_ref || pi_theta)`` with ``pi_ref = N(0, I)``; for this potential the
optimum is known, ``theta* = target / (1 + lam / 2)``, and the script prints it next to
what the loop found.

    python examples/langevin_reward.py --quick
    python examples/langevin_reward.py --kl-weight 0 --steps 2000
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from samplegrad.implicit import langevin

NAME = "langevin_reward"


def potential(x: Tensor, theta: Tensor) -> Tensor:
    """``V(x, theta) = ||x - theta||^2 / 2``: ``x (N, 2)``, ``theta (2,)`` -> ``(N,)``."""
    return 0.5 * (x - theta).pow(2).sum(-1)


def make_reward(target: Tensor) -> Callable[[Tensor], Tensor]:
    """``R(x) = -||x - target||^2``: ``(N, 2) -> (N,)``."""
    def reward(x: Tensor) -> Tensor:
        return -(x - target).pow(2).sum(-1)
    return reward


def plot(hist: dict[str, list], x: Tensor, target: Tensor, optimum: Tensor,
         path: Path) -> bool:
    """Particles at the end, the path of theta, the target (skipped without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax0.scatter(x[:, 0], x[:, 1], s=3, alpha=0.3, label="particles (end)")
    th = torch.tensor(hist["theta"])
    ax0.plot(th[:, 0], th[:, 1], color="C1", label="theta")
    ax0.scatter(*target.tolist(), marker="*", s=150, color="C3", label="target")
    ax0.scatter(*optimum.tolist(), marker="x", s=80, color="k", label="optimum")
    ax0.set_aspect("equal")
    ax0.legend(fontsize=8)
    ax1.plot(hist["step"], hist["reward"])
    ax1.set(xlabel="step", ylabel="mean reward over particles")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000, help="single-loop iterations")
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--step-size", type=float, default=0.1, help="Langevin step size gamma")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate of theta")
    p.add_argument("--optimizer", default="SGD", help="a torch.optim class name")
    p.add_argument("--kl-weight", type=float, default=0.5,
                   help="lam in E[R] - lam KL(N(0, I) || pi_theta); 0 disables it")
    p.add_argument("--target", default="2.0,1.0", help="comma-separated 2-D target point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few seconds: fewer steps/particles")
    p.add_argument("--out", type=Path, default=Path("runs/examples") / NAME,
                   help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.particles = 300, 500
    try:
        args.target = [float(v) for v in args.target.split(",")]
    except ValueError:
        p.error(f"--target: expected two comma-separated numbers, got {args.target!r}")
    if len(args.target) != 2:
        p.error(f"--target: expected two numbers, got {len(args.target)}")
    if args.steps < 1 or args.particles < 2:
        p.error("--steps must be >= 1 and --particles >= 2")
    if not (args.step_size > 0 and args.lr > 0 and args.kl_weight >= 0):
        p.error("--step-size and --lr must be > 0, --kl-weight >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    target = torch.tensor(args.target)
    reward = make_reward(target)
    cfg = langevin.LangevinConfig(step_size=args.step_size, lr=args.lr,
                                  optimizer=args.optimizer, kl_weight=args.kl_weight,
                                  n_particles=args.particles, n_ref=args.particles)
    theta0 = torch.zeros(2)
    # the KL reference is pi_{theta_ref} = N(0, I): its own particles run alongside
    ref = {"theta_ref": theta0.clone()} if args.kl_weight > 0 else {}
    state = langevin.init(potential, theta0, cfg, shape=2, seed=args.seed, **ref)
    print(f"Implicit Langevin: {args.steps} steps, {args.particles} particles, "
          f"target {args.target}, kl_weight {args.kl_weight}")

    hist: dict[str, list] = {"step": [], "reward": [], "theta": []}
    t0 = time.perf_counter()
    for i in range(args.steps):
        state, info = langevin.step(state, potential, reward, cfg)
        hist["step"].append(state.step)
        hist["reward"].append(info["reward"])
        hist["theta"].append(state.theta.detach().tolist())
        if (i + 1) % max(1, args.steps // 5) == 0:
            th = ", ".join(f"{v:+.3f}" for v in hist["theta"][-1])
            print(f"  step {i + 1:5d}/{args.steps}  mean reward {info['reward']:8.3f}  "
                  f"theta ({th})", flush=True)
    seconds = time.perf_counter() - t0

    theta = state.theta.detach()
    optimum = target / (1 + args.kl_weight / 2)
    # exact expected reward of N(theta, I): -||theta - target||^2 - 2 (the particles lag)
    exact_before = float(-(theta0 - target).pow(2).sum() - 2)
    exact_after = float(-(theta - target).pow(2).sum() - 2)
    print(f"\nreward before: {hist['reward'][0]:8.3f} (particles)  {exact_before:8.3f} (exact)")
    print(f"reward after:  {sum(hist['reward'][-20:]) / len(hist['reward'][-20:]):8.3f} "
          f"(particles, last 20 steps)  {exact_after:8.3f} (exact)")
    print(f"theta found:   ({theta[0]:+.3f}, {theta[1]:+.3f})   optimum "
          f"target / (1 + lam/2) = ({optimum[0]:+.3f}, {optimum[1]:+.3f})   "
          f"[{seconds:.1f} s]")

    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
               "theta": theta.tolist(), "optimum": optimum.tolist(),
               "reward_before": exact_before, "reward_after": exact_after,
               "seconds": seconds, "history": hist}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    plotted = plot(hist, state.x, target, optimum, args.out / "langevin.png")
    print(f"\noutputs in {args.out}/ (results.json{', langevin.png' if plotted else ''})")


if __name__ == "__main__":
    main()

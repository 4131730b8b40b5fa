"""Text to image on this CPU: seconds per denoising step of the tiny pipeline
(models/tiny-diffusion, random weights), and what a job adds to it.

    .venv/bin/python bench/text_to_image.py        (make bench-t2i)

1. The pipeline alone, one torch thread (a job process's share of 2 cores with
   two job processes; ``--threads`` for others): milliseconds per step by image
   size, the median of ``--rounds`` images of ``--steps`` steps.
2. The same images as background jobs, run by the JobRunner a job worker uses
   on the embedded SQLite store and disk results (steps saved as progress, the
   PNG written): the job's seconds against the pipeline's alone, interleaved
   rounds, medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.backends import build_backends  # noqa: E402
from jobs.records import Job, new_job_id  # noqa: E402
from jobs.runner import JobRunner  # noqa: E402
from predict import ModelRegistry, Predictor  # noqa: E402
from serving.settings import REPO_ROOT, Settings  # noqa: E402
from serving.threads import set_compute_threads  # noqa: E402

MODEL = "tiny-diffusion"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,256", help="square image sizes, pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    set_compute_threads(args.threads)
    registry = ModelRegistry(REPO_ROOT / "models", [MODEL], runs_jobs=True)
    registry.load_all()
    predictor = Predictor(registry, batching=False)

    def item(size: int, seed: int) -> dict:
        return {"prompt": "a sunset over a beach", "num_steps": args.steps, "seed": seed, "width": size, "height": size}

    predictor.predict(MODEL, [item(64, 0)], cached=False)  # first call: the pipeline moves to its device
    print(f"# {MODEL}: {args.steps} steps per image, {args.threads} torch thread(s), medians of {args.rounds}")
    print("size  ms/step  s/image")
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        times = []
        for seed in range(args.rounds):
            started = time.perf_counter()
            predictor.predict(MODEL, [item(size, seed)], cached=False)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        print(f"{size:>4}  {median / args.steps * 1000:7.1f}  {median:7.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(_env_file=None, jobs_dir=Path(tmp))
        backends = build_backends(settings)
        runner = JobRunner(backends.store, backends.results, predictor, heartbeat_s=2.0, requeue=lambda *_: None)
        size = sizes[0]
        alone, as_job = [], []
        for seed in range(args.rounds):
            started = time.perf_counter()
            predictor.predict(MODEL, [item(size, seed)], cached=False)
            alone.append(time.perf_counter() - started)
            job = Job(id=new_job_id(), model=MODEL, total=1, batch_size=1, steps_total=args.steps)
            backends.store.create(job, [item(size, seed)])
            started = time.perf_counter()
            runner(job.id)
            as_job.append(time.perf_counter() - started)
            assert backends.store.get(job.id).status == "succeeded"
        a, j = statistics.median(alone), statistics.median(as_job)
        print(f"\n# {size}x{size}: the pipeline alone {a:.3f} s, as a job (SQLite, disk) {j:.3f} s: "
              f"job / alone = {j / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`stego seeds N`: the pipeline once per seed, each a DVC experiment, then mean ± sd over them.

    stego seeds 5                 # seeds 0..4 as experiments seed-0 .. seed-4
    stego seeds 3 --first 10      # seeds 10, 11, 12

Each run is `dvc exp run -S seed=<s> --name seed-<s>`: DVC re-runs only what the seed
changes (train, cluster and the stages after them; extraction and kNN stay cached) and keeps
every run as an experiment (`dvc exp show`). The table goes to `metrics/seeds.json` and into
the report; the workspace is left at the last seed's experiment, as `dvc exp run` leaves it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from stego_tasks.errors import ToolFailedError
from stego_tasks.paths import PATHS, run_path
from stego_tasks.runtime import atomic
from stego_tasks.tools.seeds import aggregate, save_val_map, seed_agreement


def run_seeds(seeds: list[int], repo: Path = Path("."), prefix: str = "seed", out: Path = Path(PATHS["seeds"])) -> dict:
    """Run one DVC experiment per seed in `repo` and write the mean ± sd table to `out`.

    Args:
        seeds: the seeds, in order.
        repo: the DVC project.
        prefix: experiment names are `<prefix>-<seed>`.
        out: the JSON table, relative to `repo`.

    Returns:
        The `stego_tasks.tools.seeds.aggregate` mapping.

    Raises:
        RuntimeError: a run failed (its output is shown; the finished runs are kept).
    """
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    # Stage commands call `stego`: make sure this interpreter's bin folder is on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    runs = []
    with tempfile.TemporaryDirectory(prefix="stego-seeds-") as maps_dir:
        maps, n_clusters = [], 0
        for seed in seeds:
            print(f"stego seeds: seed {seed} ({len(runs) + 1} of {len(seeds)})", flush=True)
            command = ["dvc", "exp", "run", "-S", f"seed={seed}", "--name", f"{prefix}-{seed}"]
            result = subprocess.run(command, cwd=repo, env=env, check=False)
            if result.returncode != 0:
                raise ToolFailedError(f"`{' '.join(command)}` failed (exit {result.returncode}); "
                                   f"the {len(runs)} finished seed(s) are kept as experiments.")
            scores = json.loads(run_path(repo, "scores").read_text(encoding="utf-8"))
            runs.append((seed, scores))
            # The workspace keeps only the last experiment's maps: keep each seed's for the agreement.
            map_path = Path(maps_dir) / f"seed-{seed}.npy"
            n_clusters = max(n_clusters, save_val_map(repo, map_path))
            maps.append((seed, map_path))
        summary = aggregate(runs)
        summary["label_free"] = {"seed_ami": seed_agreement(maps, n_clusters)}
    atomic.write_json(repo / out, summary)
    return summary

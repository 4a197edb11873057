"""`ray job submit --working-dir .` uploads the code, not the run state around it: Ray's own packaging, with the
repository's .gitignore and .rayignore, leaves out checkpoints, MLflow stores, virtualenvs and caches."""

import shutil
import subprocess
import zipfile
from pathlib import Path

from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, create_package

REPO = Path(__file__).resolve().parents[2]
LEFT_BEHIND = [  # what a repository with old runs holds, all of it large in real life
    ".venv/lib/python3.11/site-packages/torch/lib/libtorch.so",
    ".git/objects/pack/pack-1.pack",
    ".cluster/mlflow.db",
    ".cluster/mlartifacts/1/abc/artifacts/model/model.safetensors",
    "mlruns/0/meta.yaml",
    "mlflow.db",
    "runs/gpt-tiny/checkpoint_2026-11-01_10-00-00.000000/state/mp_rank_00_model_states.pt",
    "checkpoints/old/zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ".cache/orchestrator/datasets/causal_lm-1234/train.parquet",
    "predictions/part-0.parquet",
    "benchmarks/results/data_pipeline.json",
    "orchestrator/__pycache__/cli.cpython-311.pyc",
]


def test_the_upload_holds_the_code_and_none_of_the_run_state(tmp_path):
    repo = tmp_path / "repo"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    for name in LEFT_BEHIND:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(b"\0" * 1024 * 1024)

    package = tmp_path / "package.zip"
    create_package(str(repo), package, include_gitignore=True)
    uploaded = set(zipfile.ZipFile(package).namelist())

    assert {"pyproject.toml", "orchestrator/cli/app.py", "jobs/gpt-tiny.yaml"} <= uploaded
    assert not [name for name in LEFT_BEHIND if name in uploaded]
    assert package.stat().st_size < GCS_STORAGE_MAX_SIZE // 10

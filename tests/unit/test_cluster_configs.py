"""The multi-node configs in cluster/, checked offline: the AWS launcher config against Ray's own schema, and the
KubeRay manifests against the fields they need (no KubeRay CRD schema installs from a registry here). Both must run
the same job files as a laptop: same entrypoint, same install, and checkpoints and the data cache on storage that
every node mounts."""

import shlex
from pathlib import Path

import yaml
from helpers import REPO, write_job
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.config import load_job
from orchestrator.config.load import SHARED_STORAGE

CLUSTER = REPO / "cluster"
IMAGE_ROOT = Path("/app")  # where cluster/Dockerfile puts the repository


def kubernetes(name: str) -> list[dict]:
    return list(yaml.safe_load_all((CLUSTER / "kubernetes" / name).read_text()))


def check_job_file_runs(path: Path, corpus, tmp_path) -> None:
    """The job file exists and validates (with the test corpus for the installed one)."""
    job = yaml.safe_load(path.read_text())
    job["data"]["paths"] = [str(corpus)]
    load_job(write_job(tmp_path / path.name, job))


def test_the_aws_launcher_config_passes_rays_schema_and_installs_and_shares_like_the_local_cluster():
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does before it reaches AWS: Ray's defaults and schema
    assert config["provider"]["type"] == "aws"
    assert config["file_mounts"]["~/orchestrator"] == "."  # the repository, on every node
    setup = " && ".join(config["setup_commands"])
    assert "bash cluster/install.sh --runtime" in setup and (CLUSTER / "install.sh").is_file()
    assert "mount -t nfs4" in setup and " /mnt/shared" in setup
    for start in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = " ".join(config[start])
        assert f"{SHARED_STORAGE}=/mnt/shared" in commands and "RAY_AUTH_MODE=token" in commands, start
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])  # reached through SSH
    for node_type in config["available_node_types"].values():  # what the user must fill in, said in the header
        assert node_type["node_config"]["ImageId"] == "ami-REPLACE"
    assert "replace the two REPLACE values" in (CLUSTER / "aws.yaml").read_text()


def test_the_rayjob_runs_an_example_job_file_with_shared_storage_token_auth_and_mlflow(corpus, tmp_path):
    (job,) = kubernetes("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    python, module, package, command, job_file = shlex.split(spec["entrypoint"])
    assert (python, module, package, command) == ("python", "-m", "orchestrator", "train")
    job_path = REPO / Path(job_file).relative_to(IMAGE_ROOT)
    check_job_file_runs(job_path, corpus, tmp_path)
    assert spec["shutdownAfterJobFinishes"] is True

    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    (claim,) = kubernetes("shared-storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = set()
    for group in groups:
        assert isinstance(group["rayStartParams"], dict)
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        images.add(container["image"])
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume["persistentVolumeClaim"]["claimName"] for volume in pod["volumes"]}
        assert mounts["shared"] == env[SHARED_STORAGE] and volumes["shared"] == claim["metadata"]["name"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]

    workers = load_job(write_job(tmp_path / "resolved.yaml", yaml.safe_load((tmp_path / job_path.name).read_text())))
    worker_cpus = sum(int(g["replicas"]) * int(g["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]) for g in cluster["workerGroupSpecs"])
    assert worker_cpus >= workers.scaling.num_workers * workers.scaling.cpus_per_worker

    deployment, service = kubernetes("mlflow.yaml")
    assert env["MLFLOW_TRACKING_URI"] == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert f"--allowed-hosts {service['metadata']['name']}," in " ".join(server["args"])  # MLflow refuses other hosts
    images.add(server["image"])
    assert len(images) == 1  # one image, built from cluster/Dockerfile
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "bash cluster/install.sh --runtime" in dockerfile and "wget" in dockerfile  # KubeRay's probes call wget
    assert f"WORKDIR {IMAGE_ROOT}" in dockerfile

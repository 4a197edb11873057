"""The DeepSpeed config is derived from the job in one place; these pin what DeepSpeed relies on."""

from orchestrator.config.load import validate
from orchestrator.train.deepspeed_config import accumulation_steps, bucket_sizes, deepspeed_config


def job(**sections):
    raw = {"data": {"paths": ["unused.jsonl"]}, "train": {"max_steps": 10, "micro_batch_size": 4, "grad_accum_steps": 3}}
    raw["scaling"] = {"num_workers": 2}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate(raw)


def test_batch_arithmetic_and_defaults():
    config = deepspeed_config(job())
    assert config["train_batch_size"] == 4 * 3 * 2 == job().global_batch_size
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["gradient_accumulation_steps"] == 3
    assert config["zero_optimization"] == {"stage": 0}
    assert config["optimizer"]["type"] == "AdamW" and config["optimizer"]["params"]["torch_adam"] is True
    assert not config["bf16"]["enabled"] and not config["fp16"]["enabled"]


def test_an_elastic_job_on_fewer_workers_accumulates_to_the_same_global_batch():
    elastic = job(scaling={"num_workers": 2, "min_workers": 1})
    one_worker = deepspeed_config(elastic, world_size=1)
    assert one_worker["train_batch_size"] == 24 and one_worker["gradient_accumulation_steps"] == accumulation_steps(elastic, 1) == 6
    assert deepspeed_config(elastic)["gradient_accumulation_steps"] == 3


def test_model_parallel_groups_share_a_batch():
    """Workers of a tensor- or pipeline-parallel group train on the same batch: the global batch counts replicas."""
    pipeline = job(parallelism={"pipeline": 2})
    assert pipeline.data_parallel_size == 1 and pipeline.global_batch_size == 4 * 3
    assert deepspeed_config(pipeline)["train_batch_size"] == 12 and "tensor_parallel" not in deepspeed_config(pipeline)
    tensor = job(model={"family": "llama"}, parallelism={"tensor": 2}, scaling={"num_workers": 4})
    config = deepspeed_config(tensor)
    assert tensor.data_parallel_size == 2 and tensor.global_batch_size == 4 * 3 * 2
    assert config["tensor_parallel"] == {"autotp_size": 2} and config["gradient_accumulation_steps"] == 3
    assert "train_batch_size" not in config  # DeepSpeed would count the tensor-parallel ranks as replicas


def test_zero3_offload_and_precision():
    config = deepspeed_config(job(deepspeed={"zero_stage": 3, "offload_optimizer": True, "offload_params": True, "precision": "bf16"}))
    assert config["zero_optimization"] == {
        "stage": 3,
        **bucket_sizes(3, 128),
        "offload_optimizer": {"device": "cpu"},
        "offload_param": {"device": "cpu"},
    }
    assert config["bf16"]["enabled"] and config["zero_force_ds_cpu_optimizer"] is False


def test_optimizers():
    sgd = deepspeed_config(job(train={"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}))["optimizer"]
    assert sgd == {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}}
    adam = deepspeed_config(job(train={"optimizer": {"name": "adam", "betas": [0.8, 0.95]}}))["optimizer"]
    assert adam["type"] == "Adam" and adam["params"]["adam_w_mode"] is False and adam["params"]["betas"] == [0.8, 0.95]


def test_extra_is_deep_merged_last():
    extra = {"zero_optimization": {"reduce_bucket_size": 1000}, "gradient_clipping": 0.5, "flops_profiler": {"enabled": True}}
    config = deepspeed_config(job(train={"grad_clip": 0.5}, deepspeed={"zero_stage": 2, "extra": extra}))
    assert config["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 1000, "allgather_bucket_size": 2**20}
    assert config["gradient_clipping"] == 0.5 and config["flops_profiler"] == {"enabled": True}


def test_zero_buckets_follow_the_model_width():
    wide = {"dims": {"hidden": 2048, "heads": 16}}
    stage3 = deepspeed_config(job(deepspeed={"zero_stage": 3}, model=wide))["zero_optimization"]
    assert stage3["reduce_bucket_size"] == 2048**2 and stage3["stage3_param_persistence_threshold"] == 20480
    stage2 = deepspeed_config(job(deepspeed={"zero_stage": 2}))["zero_optimization"]  # tiny preset: at least 2**20
    assert stage2["reduce_bucket_size"] == stage2["allgather_bucket_size"] == 2**20

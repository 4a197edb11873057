"""The yardstick of benchmarks/first_step.py: a bare PyTorch script a user would write for the same model, without
Ray, DeepSpeed or this framework. It imports torch and transformers, builds the job's GPT-2 from its dimensions, reads
one micro batch of the job's prepared split and takes one AdamW step, then prints the wall-clock time of that step's
end (the parent counts from before it started this process).

    python benchmarks/bare_first_step.py SPLIT_DIR '{"n_layer": 2, ...}' MICRO_BATCH
"""

import json
import sys
import time

import numpy as np
import torch
import transformers


def main() -> None:
    split, config_keys, micro_batch = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    with open(f"{split}/index.json") as handle:
        first_shard = json.load(handle)["shards"][0]["name"]
    input_ids = torch.from_numpy(np.load(f"{split}/{first_shard}.input_ids.npy", mmap_mode="r")[:micro_batch].astype(np.int64))
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config_keys))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    optimizer.step()
    print(json.dumps({"first_step_at": time.time()}), flush=True)


if __name__ == "__main__":
    main()

"""Data benchmark: preprocessing throughput of the Ray Data pipeline against a plain single-process loop doing the
same work on the same corpus, in one run; and the share of step time training workers wait for data.

Both preprocessing paths read the same files and call the same functions for each stage: parse, normalize and
row checks, label conflicts and exact duplicates, MinHash near-duplicates, tokenizer training, token counting,
encoding, the split and the shuffle. The plain loop holds everything in one process's memory; the Ray path
distributes it (on this 2-core machine, over 2 CPUs) and keeps it in the object store.
The training part runs 2 workers with ZeRO-2 as jobs/gpt-tiny.yaml does (the benchmarks' GPT-2 4x256) and reads `train/data_wait_fraction` from its MLflow run.

    python -m benchmarks.data_pipeline            # about 4 minutes on 2 CPU cores
    python -m benchmarks.data_pipeline --cpus 1   # the Ray path on a cluster of 1 CPU (no training: it needs 2)
    python -m benchmarks.data_pipeline --synthetic-mb 100   # both paths on data_scale's synthetic corpus (no training)
    python -m benchmarks.data_pipeline --smoke    # a few files and steps: checks that it works
"""

import argparse
import math
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import ray

from benchmarks.common import Jobs, corpus_files, data_wait, local_cluster, write_results
from benchmarks.data_scale import synthetic_corpus
from orchestrator.config.job import JobConfig, NearDedupConfig
from orchestrator.data.augment import add_augmented_copies
from orchestrator.data.clean import (
    band_keys,
    candidate_pairs,
    copy_drops,
    copy_key_columns,
    dedup_text,
    lsh_bands,
    minhash_signatures,
    near_groups,
    normalize_text,
    pair_similarities,
    row_verdict,
)
from orchestrator.data.encode import ENCODERS, measure
from orchestrator.data.pipeline import prepare, remove_uncached
from orchestrator.data.read import fields_of, parse_file
from orchestrator.data.tokenizers import sample_rows, separator_id, train_tokenizer
from orchestrator.runtime import connect

PLAIN_BATCH_ROWS = 10_000  # rows the plain loop hashes, measures and encodes in one call


def benchmark_job(files: list[str]) -> JobConfig:
    """Classification of fortunes by file, every cleaning stage on, one augmented copy: all the pipeline's work."""
    return JobConfig.model_validate(
        {
            "task": "sequence_classification",
            "model": {"family": "bert", "size": "tiny"},
            "data": {
                "paths": files,
                "label_field": "category",
                "tokenizer": {"train": "bpe", "vocab_size": 8192},  # HF WordPiece training breaks ties at random
                "seq_len": 128,
                "val_fraction": 0.05,
                "cache": False,
                "clean": {"normalize": True, "min_chars": 10, "max_tokens": 512, "dedup_exact": True, "dedup_near": {}},
                "augment": {"copies": 1},
            },
            "train": {"max_steps": 1},
        }
    )


def plain_pipeline(job: JobConfig, files: list[str]) -> dict:
    """The same stages as data/pipeline.py, as a plain loop over one in-memory list of rows. Like the pipeline, it
    keeps band keys rather than signatures, and tokenizes in batches: the loop that held every signature and
    encoding at once peaked at 17.7 GB of memory on 100 MB."""
    cfg, fields = job.data, fields_of(job)
    rows = []
    for index, path in enumerate(files):
        rows += parse_file(Path(path).read_bytes(), path, index, "jsonl", fields)
    kept = [row for row in rows if not row["stage"]]
    for row in kept:
        row["text"] = normalize_text(row["text"])
        verdict = row_verdict(row["text"], {"label": row["label"]}, cfg.clean.min_chars, cfg.clean.max_chars)
        row["stage"] = verdict[0] if verdict else ""
    kept = [row for row in kept if not row["stage"]]
    columns = copy_key_columns(*([row.get(name) for row in kept] for name in ("text", "target", "row_id", "label")))
    drops = set(copy_drops(columns, check_conflicts=True, dedup_exact=True)["row_id"].tolist())
    kept = [row for row in kept if row["row_id"] not in drops]

    near = cfg.clean.dedup_near
    bands, band_rows = lsh_bands(near.threshold, near.num_perm)
    keys = np.array([band_keys(signature, bands, band_rows) for signature in signatures_of(kept, near)], dtype=np.int64)
    pairs = candidate_pairs({"band": keys.reshape(-1), "row_id": np.repeat([row["row_id"] for row in kept], bands)})
    involved = set(pairs["kept"].tolist()) | set(pairs["other"].tolist())
    chosen = [row for row in kept if row["row_id"] in involved]  # signatures are kept for these only, as in the pipeline
    signatures = dict(zip((row["row_id"] for row in chosen), signatures_of(chosen, near)))
    similar = similarities(signatures, pairs["kept"], pairs["other"]) >= near.threshold
    dropped, kept_instead = near_groups(pairs["kept"][similar], pairs["other"][similar])
    similarities(signatures, kept_instead, dropped)  # each drop's similarity to the row kept, for its reason
    near_drops = set(dropped.tolist())
    kept = [row for row in kept if row["row_id"] not in near_drops]

    sample = kept  # the pipeline's tokenizer sample: every row in `every`, by row_id
    if (every := math.ceil(len(rows) / cfg.tokenizer.sample_texts)) > 1:
        chosen = set(sample_rows({"row_id": np.array([row["row_id"] for row in kept])}, every)["row_id"].tolist())
        sample = [row for row in kept if row["row_id"] in chosen]
    tokenizer = train_tokenizer(cfg.tokenizer, (row["text"] for row in sample))
    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    label_ids = {name: i for i, name in enumerate(sorted({row["label"] for row in kept}))}
    rows_kept = tokens = sequences = train_sequences = 0
    for start in range(0, len(kept), PLAIN_BATCH_ROWS):
        batch = {
            column: np.array([row[column] for row in kept[start : start + PLAIN_BATCH_ROWS]], dtype=object) for column in ("text", "label", "stage", "reason")
        }
        batch = measure(batch, tokenizer_json, cfg.clean.min_tokens, cfg.clean.max_tokens, cfg.val_fraction, cfg.seed)
        keep = batch["stage"] == ""
        rows_kept, tokens = rows_kept + int(keep.sum()), tokens + int(batch["n_tokens"][keep].sum())
        examples = add_augmented_copies({"text": batch["text"][keep], "label": batch["label"][keep], "is_val": batch["is_val"][keep]}, cfg.augment)
        encoded = ENCODERS[job.task](
            examples, tokenizer_json, seq_len=cfg.seq_len, separator=separator_id(tokenizer), pad=tokenizer.pad_token_id, label_ids=label_ids
        )
        sequences, train_sequences = sequences + len(encoded["input_ids"]), train_sequences + int((~encoded["is_val"]).sum())
    np.random.default_rng(cfg.seed).permutation(train_sequences)  # the training order
    return {"rows_read": len(rows), "rows_kept": rows_kept, "tokens": tokens, "sequences": sequences}


def similarities(signatures: dict[int, np.ndarray], first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The pairs' estimated similarities, as the pipeline's tasks compute them (pair_similarities)."""
    pair = np.arange(len(first))
    ends = [signatures[row_id] for row_id in np.concatenate([first, second]).tolist()]
    return pair_similarities({"pair": np.concatenate([pair, pair]), "signature": np.array(ends).reshape(len(ends), -1)})["similarity"]


def signatures_of(rows: list[dict], near: NearDedupConfig) -> Iterator[np.ndarray]:
    """The rows' MinHash signatures, PLAIN_BATCH_ROWS at a time: never all held at once."""
    for start in range(0, len(rows), PLAIN_BATCH_ROWS):
        texts = [dedup_text(row["text"], None) for row in rows[start : start + PLAIN_BATCH_ROWS]]
        yield from minhash_signatures(texts, near.num_perm, near.shingle_words)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--cpus", type=int, help="the local cluster's CPUs (default: every core); training needs 2")
    parser.add_argument("--synthetic-mb", type=float, help="benchmarks/data_scale.py's corpus of this size instead of the fortunes (no training)")
    args = parser.parse_args()
    files = synthetic_corpus(args.synthetic_mb) if args.synthetic_mb else corpus_files(args.smoke)
    job = benchmark_job(files)

    started = time.perf_counter()
    plain = plain_pipeline(job, files)
    plain["seconds"] = time.perf_counter() - started
    plain["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process's, Ray not yet started

    with local_cluster(num_cpus=args.cpus) as env, tempfile.TemporaryDirectory() as directory:
        connect()  # as a job's driver: ordered blocks, the sort-based shuffle, the job's settings in every Ray process
        cpus = int(ray.cluster_resources()["CPU"])
        started = time.perf_counter()
        prepared = prepare(job)
        seconds = time.perf_counter() - started
        remove_uncached(prepared)
        ray.shutdown()
        training = cpus >= 2 and not args.synthetic_mb
        wait = data_wait(Jobs(Path(directory), env, files), 20 if args.smoke else 200) if training else None
    report = prepared.report
    ray_data = {
        "rows_read": report.rows_read,
        "rows_kept": report.rows_kept,
        "tokens": report.tokens,
        "sequences": report.train_sequences + report.val_sequences,
        "seconds": seconds,
    }
    assert (ray_data["rows_kept"], ray_data["tokens"]) == (plain["rows_kept"], plain["tokens"]), (ray_data, plain)

    for result in (plain, ray_data):
        result["rows_per_s"] = result["rows_read"] / result["seconds"]
        result["tokens_per_s"] = result["tokens"] / result["seconds"]
    results = {
        "machine": f"{os.cpu_count()} CPU cores",
        "ray_cpus": cpus,
        "corpus": f"synthetic, {args.synthetic_mb:g} MB" if args.synthetic_mb else f"{len(files)} fortunes files",
        "plain_loop": plain,
        "ray_data": ray_data,
        "ray_over_plain_throughput": plain["seconds"] / ray_data["seconds"],
        "training": wait,
    }
    write_results(f"data_pipeline_{args.synthetic_mb:g}MB" if args.synthetic_mb else "data_pipeline", results, markdown(results))


def markdown(results: dict) -> list[str]:
    rows = [
        "| path | rows | kept | tokens | seconds | rows/s | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("plain_loop", "ray_data"):
        r = results[name]
        rows.append(
            f"| {name} | {r['rows_read']:,} | {r['rows_kept']:,} | {r['tokens']:,} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {r['tokens_per_s']:,.0f} |"
        )
    rows += [
        "",
        f"Ray Data (CPUs: {results['ray_cpus']}) / plain loop throughput: {results['ray_over_plain_throughput']:.2f}",
        f"Plain loop's peak RSS: {results['plain_loop']['peak_rss_mb']:,.0f} MB",
    ]
    if wait := results["training"]:
        rows.append(
            f"Training ({wait['steps']} steps, 2 workers, ZeRO-2): workers wait for data {100 * wait['mean_data_wait_fraction']:.2f}% "
            f"of step time on average (worst logging window {100 * wait['max_data_wait_fraction']:.2f}%)"
        )
    return rows


if __name__ == "__main__":
    main()

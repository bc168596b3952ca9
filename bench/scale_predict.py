"""Sentences/s of `predict --engine ray` (a local Ray cluster, an actor pool of Predictors) against
single-process `predict` on the same file, in one process tree; prints both and the ratio.

Both figures include loading the model (each actor loads its own) and writing JSONL; the Ray figure
excludes starting the cluster (a running cluster is the engine's normal case).

    python bench/scale_predict.py --model /tmp/h18/lora --input ../shared/data/sst2/dev.tsv --cpus 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import ray

    from sentitune.inference import Predictor, stream_texts, write_jsonl
    from sentitune.runtime import machine_line
    from sentitune.scale.ray_predict import predict_with_ray

    texts = list(stream_texts(args.input))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        predictor = Predictor.load(args.model, device="cpu")
        loaded = time.perf_counter()
        count = write_jsonl(predictor.predict_stream(texts, args.batch_size), str(Path(tmp) / "single.jsonl"))
        single_s = time.perf_counter() - start
        single_predict_s = time.perf_counter() - loaded
        del predictor

        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            manifest = predict_with_ray(
                args.model,
                [args.input],
                Path(tmp) / "ray",
                concurrency=args.concurrency,
                batch_size=args.batch_size,
                num_cpus=args.cpus / args.concurrency,
                load_kwargs={"device": "cpu"},
            )
        finally:
            ray.shutdown()
    assert manifest["rows"] == count == len(texts)
    print(machine_line(), f"| load average {os.getloadavg()[0]:.1f}")
    print(
        f"single process: {count / single_s:.1f} sentences/s with load ({count / single_predict_s:.1f} without), "
        f"{single_s:.1f} s"
    )
    print(
        f"ray, {args.concurrency} actors on {args.cpus} CPUs: {manifest['sentences_per_second']:.1f} sentences/s "
        f"with actor load, {manifest['seconds']:.1f} s"
    )
    print(f"ratio ray / single: {manifest['sentences_per_second'] / (count / single_s):.2f}")


if __name__ == "__main__":
    main()

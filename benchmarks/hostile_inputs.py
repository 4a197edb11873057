"""How long `orchestrator validate` takes to refuse 10 MB hostile job files, as a user runs it (a fresh process).

Each file is the example job (jobs/gpt-tiny.yaml) with one part made huge: a 10 MB string where a name, a path or a
key goes, 10 MB of text that needs escaping, a 10 MB URL password, or 100,000 values. Every one must exit 2 with one
line; the table gives the wall time of each, beside the valid job's for comparison.

    python -m benchmarks.hostile_inputs
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MB = 2**20
TEN_MB = 10 * MB


def hostile_files(job: dict) -> dict[str, dict | str]:
    """Name -> the job with one part made huge (a dict), or raw YAML text where a dict cannot express it."""
    cases: dict[str, dict | str] = {"valid job (reference)": job}

    def changed(section: str, key: str, value) -> dict:
        return json.loads(json.dumps(job)) | {section: job.get(section, {}) | {key: value}}

    cases["10 MB model.family"] = changed("model", "family", "a" * TEN_MB)
    cases["10 MB tracking.run_name"] = changed("tracking", "run_name", "a" * TEN_MB)
    cases["10 MB data.cache_dir"] = changed("data", "cache_dir", "/tmp/" + "a/" * (TEN_MB // 2))
    cases["10 MB of escape sequences in a value"] = changed("model", "size", "\x1b[2J\n" * (TEN_MB // 5))
    cases["10 MB URL password"] = changed("tracking", "uri", "https://user:" + "p@" * (TEN_MB // 2) + "host/")
    cases["100,000 values in data.paths"] = changed("data", "paths", ["x"] * 100_000)
    text = yaml.safe_dump(job, sort_keys=False)
    cases["10 MB unknown key"] = text + f'? "{"k" * TEN_MB}"\n: 1\n'  # an implicit key has at most 1,024 characters
    return cases


def main() -> None:
    job = yaml.safe_load((REPO / "jobs" / "gpt-tiny.yaml").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name, content in hostile_files(job).items():
            path = Path(directory) / "job.yaml"
            path.write_text(content if isinstance(content, str) else json.dumps(content))  # JSON is YAML
            started = time.monotonic()
            out = subprocess.run([sys.executable, "-m", "orchestrator", "validate", str(path)], capture_output=True, text=True)
            seconds = time.monotonic() - started
            lines = out.stderr.splitlines()
            said = (lines or out.stdout.splitlines() or [""])[0]
            rows.append((name, path.stat().st_size / MB, out.returncode, len(lines), seconds, said[:90].replace("|", "/")))
    print("| file | MB | exit | stderr lines | seconds | what it says (first 90 characters) |")
    print("|---|---|---|---|---|---|")
    for name, size, code, count, seconds, said in rows:
        print(f"| {name} | {size:.1f} | {code} | {count} | {seconds:.2f} | `{said}` |")


if __name__ == "__main__":
    main()

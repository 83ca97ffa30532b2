"""lm-eval task definitions on local data, written as YAML + JSONL into the cache.

- ``heldout``: ``loglikelihood_rolling`` over the data group's held-out documents (word and byte
  perplexity, bits per byte; corpus-level, as lm-eval computes wikitext).
- ``analogy``: the word-analogy questions of Mikolov et al. (2013) from the gensim wheel, scored
  LAMBADA-style: "a is to b as c is to" + " d" is correct only if every target token is the
  greedy argmax under teacher forcing. ``analogy_per_section`` questions from each section.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

from infopt.data.corpus import gensim_test_file
from infopt.io import atomic_dir, verify_manifest, write_manifest

LOCAL_TASKS = ("heldout", "analogy")

_HELDOUT_YAML = """\
task: heldout
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""

_ANALOGY_YAML = """\
task: analogy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{a}}}} is to {{{{b}}}} as {{{{c}}}} is to"
doc_to_target: " {{{{d}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def analogy_questions(per_section: int, seed: int = 0) -> list[dict[str, str]]:
    """A fixed, stratified sample: ``per_section`` questions from each section, in file order."""
    sections: dict[str, list[dict[str, str]]] = {}
    current = ""
    for line in gensim_test_file("questions-words.txt").read_text().splitlines():
        if line.startswith(":"):
            current = line[1:].strip()
            sections[current] = []
            continue
        words = line.split()
        if len(words) == 4:
            a, b, c, d = words
            sections[current].append({"section": current, "a": a, "b": b, "c": c, "d": d})
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    for name in sections:  # file order, so the sample is stable across Python versions
        qs = sections[name]
        picked = sorted(rng.sample(range(len(qs)), min(per_section, len(qs))))
        out.extend(qs[i] for i in picked)
    return out


def write_tasks(cache_dir: Path, heldout_docs: Sequence[str], analogy_per_section: int) -> Path:
    """Write both tasks under a directory keyed by their content; return it (lm-eval include_path)."""
    analogy = analogy_questions(analogy_per_section)
    key = hashlib.sha256(json.dumps([list(heldout_docs), analogy]).encode()).hexdigest()[:16]
    target = cache_dir / "eval_tasks" / key
    if (target / "analogy.yaml").is_file() and verify_manifest(target) is None:
        return target  # else missing, damaged or from before manifests: written again below
    with atomic_dir(target) as tmp:
        with open(tmp / "heldout.jsonl", "w") as f:
            for doc in heldout_docs:
                f.write(json.dumps({"text": doc}) + "\n")
        with open(tmp / "analogy.jsonl", "w") as f:
            for q in analogy:
                f.write(json.dumps(q) + "\n")
        (tmp / "heldout.yaml").write_text(_HELDOUT_YAML.format(data=target / "heldout.jsonl"))
        (tmp / "analogy.yaml").write_text(_ANALOGY_YAML.format(data=target / "analogy.jsonl"))
        write_manifest(tmp)
    return target

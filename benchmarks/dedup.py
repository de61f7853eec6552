"""Dedup cost on real page text (not a test).

  * MinHash signatures per second on one core (word 5-grams, 112 permutations),
    on the extracted text of the real articles in ../shared/data/html;
  * peak memory of the worker code as the number of documents grows 10x: it must
    stay flat, since no step keeps per-worker state that grows with the corpus;
  * for reference, the peak RSS of Beam's local multi-process runner's workers on
    the whole dedup stage (that runner hands each worker a stage's input as one
    bundle, so its figure grows with the input; Dataflow and Flink bound bundles).

    scripts/in-venv python benchmarks/dedup.py [--small 2000] [--factor 10]
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def article_texts():
    from filters.html import decode_html, extract_content
    texts = []
    for path in sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "html" / "*.html"))):
        text, _ = decode_html(Path(path).read_bytes())
        content = extract_content(text, "https://example.org/")
        body = " ".join(i.text for i in content.items if i.kind == "text")
        if len(body.split()) > 100:
            texts.append(body)
    return texts


def signatures_per_second(texts, repeat=5):
    """Ours (what the job runs: ``MinHasher.of_text``), and datasketch's ``update_batch``
    on the same shingles with its default SHA-1 hash, documents/s on one core."""
    import datasketch
    from filters.dedup import MinHasher, word_ngrams
    hasher = MinHasher(112, seed=1)
    hasher.of_text(texts[0], 5)                 # compile once (numba), as a worker does at start
    words = sum(len(t.split()) for t in texts)
    t0 = time.perf_counter()
    for _ in range(repeat):
        for t in texts:
            hasher.of_text(t, 5)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in texts:
        ref = datasketch.MinHash(num_perm=112, seed=1)
        ref.update_batch(set(word_ngrams(t, 5)))
    theirs = time.perf_counter() - t0
    return repeat * len(texts) / ours, repeat * words / ours, len(texts) / theirs


def streamed_worker_peak(n_docs: int) -> dict:
    """What one worker's own code holds: documents streamed one at a time through
    the dedup DoFns (signatures and band keys, a group's survivor choice, the
    near-duplicate verdict), with tracemalloc's peak over the whole stream."""
    import tracemalloc
    from filters.config import DedupConfig
    from transforms.dedup import DropNearDuplicates, KeepBestOfGroup, MakeDedupKeys, band_nodes, star_edges
    from transforms.records import Candidate, Provenance

    texts = article_texts()
    make_key = MakeDedupKeys(DedupConfig())
    make_key.setup()
    keep = KeepBestOfGroup("duplicate_url")
    drop = DropNearDuplicates()

    def make(i):
        words = texts[i % len(texts)].split()
        random.Random(i).shuffle(words)
        return Candidate(f"{i:032x}", f"http://site.example/{i}", "2024-01-01T00:00:00Z", "",
                         Provenance("bench.warc.gz", i), [{"type": "text", "text": " ".join(words[:400])}])

    tracemalloc.start()
    t0 = time.perf_counter()
    emitted = 0
    for i in range(n_docs):
        c = next(iter(make_key.process(make(i))))
        keys = list(band_nodes(c))
        emitted += len(keys)
        for _ in star_edges((keys[0][0], [k[1] for k in keys[:3]])):
            pass
        for _ in keep.process((c.url, [c])):
            pass
        for _ in drop.process((c.doc_id, {"doc": [c], "survivor": []})):
            pass
    secs = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"docs": n_docs, "seconds": secs, "peak_mb": peak / 2 ** 20, "band_keys": emitted}


def lsh_curve(pairs_per_point=400):
    """Catch rate of 14 x 8 banding against exact Jaccard on generated shingle sets."""
    from filters.dedup import MinHasher, band_keys, collision_probability, jaccard
    rng = random.Random(11)
    hasher = MinHasher(112, seed=1)
    rows = []
    for s in (0.2, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        caught, js = 0, []
        for _ in range(pairs_per_point):
            size = 200
            inter = round(2 * size * s / (1 + s))
            common = [rng.getrandbits(64).to_bytes(8, "big") for _ in range(inter)]
            a = common + [rng.getrandbits(64).to_bytes(8, "big") for _ in range(size - inter)]
            b = common + [rng.getrandbits(64).to_bytes(8, "big") for _ in range(size - inter)]
            js.append(jaccard(a, b))
            caught += bool(set(band_keys(hasher.signature(a), 14, 8)) & set(band_keys(hasher.signature(b), 14, 8)))
        j = sum(js) / len(js)
        rows.append((j, caught / pairs_per_point, collision_probability(j, 14, 8)))
    return rows


def worker_peak_rss(n_docs: int) -> dict:
    """Run the dedup stage over ``n_docs`` generated documents in a child process
    with two local worker processes; report the largest worker's peak RSS."""
    code = f"""
import json, random, resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from filters.config import DedupConfig
from transforms.dedup import Deduplicate
from transforms.records import Candidate, Provenance
from dedup import article_texts

texts = article_texts()

def make(i):
    rng = random.Random(i)
    words = texts[i % len(texts)].split()
    # Every third document is a light edit of an earlier one, the rest are distinct mixes.
    if i % 3 == 0:
        words = words[: max(50, len(words) - 20)]
    else:
        rng.shuffle(words)
    return Candidate(f"{{i:032x}}", f"http://site{{i % 97}}.example/{{i}}", "2024-01-01T00:00:00Z", "",
                     Provenance("bench.warc.gz", i), [{{"type": "text", "text": " ".join(words[:400])}}])

opts = PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=2",
                        "--direct_running_mode=multi_processing"])
t0 = time.time()
with beam.Pipeline(options=opts) as p:
    kept, outcomes, audit = (p | beam.Create(range({n_docs})) | beam.Map(make)
                             | Deduplicate(DedupConfig()))
    kept | "CountKept" >> beam.combiners.Count.Globally()
secs = time.time() - t0
print(json.dumps({{"docs": {n_docs}, "seconds": secs,
                  "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT / "benchmarks"))
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--factor", type=int, default=10)
    args = ap.parse_args()
    texts = article_texts()
    docs_s, words_s, ref_s = signatures_per_second(texts)
    print(f"MinHash (112 permutations, word 5-grams): {docs_s:.0f} documents/s, {words_s:,.0f} words/s "
          f"on one core ({len(texts)} real articles, mean {sum(len(t.split()) for t in texts) / len(texts):.0f} words); "
          f"datasketch update_batch in the same run: {ref_s:.0f} documents/s (x{docs_s / ref_s:.1f})")
    print("LSH 14 bands x 8 rows, pairs caught at exact Jaccard J (measured / theory):")
    for j, measured, theory in lsh_curve():
        print(f"  J={j:.2f}  {measured:.3f} / {theory:.3f}")
    for n in (args.small, args.small * args.factor):
        r = streamed_worker_peak(n)
        print(f"worker code, {r['docs']:>7} documents streamed: {r['seconds']:.1f} s, "
              f"peak traced memory {r['peak_mb']:.2f} MB")
    for n in (args.small, args.small * args.factor):
        r = worker_peak_rss(n)
        print(f"dedup stage over {r['docs']:>7} documents: {r['seconds']:.1f} s, "
              f"largest worker peak RSS {r['worker_peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()

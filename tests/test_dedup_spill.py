"""Dedup with bounded memory: spilled partitions give exactly the in-memory path's (kept, removed, jaccard) lists,
clean_data's output does not change with data.memory_gb, and no spill file outlives the call."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.data.clean import clean
from engine.data.dedup import exact_duplicates, near_duplicate_clusters
from engine.data.dedup_spill import partitions_for
from engine.recipe import load_recipe
from engine.store.tables import CLUSTER_COLUMNS, QUARANTINE_COLUMNS, ROW_COLUMNS, write_rows

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


@st.composite
def corpora(draw):
    """Documents of random words, then planted exact copies, near copies (a few words replaced), short and empty
    texts, shuffled."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    base = [" ".join(rng.choice(WORDS, rng.integers(8, 40))) for _ in range(draw(st.integers(2, 30)))]
    copies = [base[i] for i in rng.integers(0, len(base), draw(st.integers(0, 10)))]
    near = []
    for i in rng.integers(0, len(base), draw(st.integers(0, 15))):
        tokens = base[i].split(" ")
        for position in rng.integers(0, len(tokens), rng.integers(1, 4)):
            tokens[position] = str(rng.choice(WORDS))
        near.append(" ".join(tokens))
    texts = base + copies + near + ["", "", "ab", "naïve café ✓"][:draw(st.integers(0, 4))]
    return [texts[i] for i in rng.permutation(len(texts))]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=corpora(), memory_gb=st.sampled_from([3e-8, 1e-7, 1e-6]), threshold=st.sampled_from([0.5, 0.8]))
def test_spilled_partitions_give_the_in_memory_lists_exactly(tmp_path, texts, memory_gb, threshold):
    assert partitions_for(len(texts), memory_gb) > 1 or len(texts) < 8  # the bound forces several partitions
    in_memory = near_duplicate_clusters(texts, threshold, 64, 5)
    assert near_duplicate_clusters(iter(texts), threshold, 64, 5, memory_gb=memory_gb, spill_dir=tmp_path) \
        == in_memory
    assert exact_duplicates(iter(texts), memory_gb=memory_gb, spill_dir=tmp_path) == exact_duplicates(texts)
    assert not any(tmp_path.iterdir())


def test_a_corpus_over_the_bound_spills_and_one_under_it_does_not(tmp_path, monkeypatch):
    import engine.data.dedup_spill as spill
    calls = []
    real = spill.spilled_near_duplicates
    monkeypatch.setattr(spill, "spilled_near_duplicates", lambda *a: calls.append(a[-1]) or real(*a))
    texts = ["one two three four five six seven", "one two three four five six seven!", "other words entirely"]
    assert near_duplicate_clusters(texts, 0.5, 64, 5, memory_gb=1.0, spill_dir=tmp_path) == \
        near_duplicate_clusters(texts, 0.5, 64, 5)
    assert calls == []
    assert near_duplicate_clusters(texts, 0.5, 64, 5, memory_gb=1e-6, spill_dir=tmp_path)[0][:2] == (0, 1)
    assert calls == [tmp_path]


def test_spill_files_are_removed_when_the_texts_fail(tmp_path):
    def texts():
        yield "a first document of several words"
        raise OSError("the source went away")
    with pytest.raises(OSError, match="went away"):
        near_duplicate_clusters(texts(), 0.8, 64, 5, memory_gb=1e-6, spill_dir=tmp_path)
    with pytest.raises(OSError, match="went away"):
        exact_duplicates(texts(), memory_gb=1e-6, spill_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_clean_data_output_is_byte_identical_under_a_tiny_memory_bound(sample_rows, tmp_path):
    cfg = load_recipe("tiny")[0].clean
    sources = ["alpaca_tasks", "sharegpt_tasks", "openai_tasks", "preference_tasks"]
    spill = tmp_path / "work"
    spill.mkdir()
    outputs = []
    for memory_gb in (None, 4.0, 1e-6):
        result = clean(sample_rows[0], cfg, sources, memory_gb=memory_gb, spill_dir=spill)
        out = tmp_path / str(memory_gb)
        out.mkdir()
        for name, rows, columns in (("rows", result.rows, ROW_COLUMNS), ("quarantine", result.quarantine,
                                    QUARANTINE_COLUMNS), ("clusters", result.clusters, CLUSTER_COLUMNS)):
            write_rows(rows, out / f"{name}.parquet", columns)
        outputs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0]) == 3 and not any(spill.iterdir())


def test_data_memory_gb_rebuilds_nothing():
    from engine.graph import STAGES
    from engine.plan import make_plan
    recipes = (load_recipe("tiny", {"data.memory_gb": gb})[0] for gb in (4.0, 0.001))
    before, after = ({name: p.fingerprint for name, p in make_plan(STAGES, recipe).items()} for recipe in recipes)
    assert before == after

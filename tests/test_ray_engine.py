"""data.engine ray: clean_data on Ray Data gives byte for byte what the local engine gives (kept rows, quarantine,
clusters, rewrites, report), on generated rows with planted copies, on LLaMA-Factory's demo files, and through the
asset; without ray installed, one line says how to get it."""

import json
import signal
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

import dagster as dg  # noqa: E402
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402

from engine.data.clean import POSITION, clean, near_text  # noqa: E402
from engine.data.clean_stage import write_result  # noqa: E402
from engine.data.ingest import content_hash, ingest  # noqa: E402
from engine.data.minhash import lsh_params, signatures  # noqa: E402
from engine.data.ray_engine import (RayClean, band_rows, in_sorted, parsed, ray_clean, require_ray,  # noqa: E402
                                    sharing, shared_buckets, signature_matrix, this_node)
from engine.data.registry import resolve_sources  # noqa: E402
from engine.errors import RecipeError  # noqa: E402
from engine.recipe import CleanSection, CleanStep  # noqa: E402
from engine.store.tables import ROW_COLUMNS, ShardWriter, read_table, table_files, table_rows  # noqa: E402

STOCK = Path("tests/fixtures/llamafactory/data")
SELECTED = ["alpaca_en_demo", "identity", "glaive_toolcall_en_demo", "dpo_en_demo", "kto_en_demo"]
BLOCK_ROWS = 7  # a tiny block: duplicate buckets straddle blocks and batches
TEST_SECONDS = 600  # Ray starts in 10-30 s here; a test past this is stuck, not slow


@pytest.fixture(autouse=True)
def bounded():
    def stuck(*_):
        raise TimeoutError(f"a Ray engine test ran past {TEST_SECONDS} s")
    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(TEST_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def steps(*specs) -> CleanSection:
    return CleanSection(steps=[TypeAdapter(CleanStep).validate_python(s) for s in specs])


def shards(rows: list[dict], folder: Path) -> list[Path]:
    """raw_data's rows as its shards hold them (several small files, not in the cleaning order)."""
    with ShardWriter(folder, "rows", ROW_COLUMNS, shard_rows=11) as writer:
        writer.add_all(reversed(rows))
    return table_files(folder, "rows")


TABLES = ("rows", "quarantine", "clusters", "rewrites")


def written(folder: Path, report: dict) -> dict[str, list[bytes] | str]:
    """The bytes of an engine's four tables (every shard) and its report."""
    return {name: [f.read_bytes() for f in table_files(folder, name)] for name in TABLES} | {
        "report": json.dumps(report)}


def both(rows: list[dict], folder: Path, cfg: CleanSection, source_order: list[str], **ray_options) -> tuple:
    """What ray_clean writes of the rows and what `clean()` writes (as the asset's writers shard it), and both
    reports."""
    for name in ("raw", "local", "ray"):
        (folder / name).mkdir(parents=True)
    local = write_result(folder / "local", clean(rows, cfg, source_order, ray_options.get("count_tokens")))
    on_ray = ray_clean(shards(rows, folder / "raw"), folder / "ray", cfg, source_order, work_dir=folder / "ray",
                       **ray_options)
    assert [p.name for p in (folder / "ray").iterdir() if p.name.startswith(".")] == []  # its spools are gone
    return written(folder / "ray", on_ray), written(folder / "local", local), on_ray, local


def test_the_asset_builds_the_same_rows_on_ray_with_rays_lines_in_the_run_log(tmp_path):
    """First in the module: the asset starts (and stops) its own Ray through dagster-ray."""
    from pipelines.definitions import ASSETS, resources
    assert not ray.is_initialized()
    built = {}
    for engine in ("local", "ray"):
        root = tmp_path / engine
        with dg.instance_for_test() as instance:
            result = dg.materialize(ASSETS, resources=resources("tiny", str(root), {"data.engine": engine}),
                                    instance=instance, selection=["raw_data", "clean_data"])
            assert result.success
            lines = [e.user_message for e in instance.all_logs(result.run_id)]
        artifact = next((root / "artifacts" / "clean_data").glob("*/manifest.json")).parent
        built[engine] = ({t: read_table(artifact, t).to_pylist()
                          for t in ("rows", "quarantine", "clusters", "rewrites")}, artifact.name, lines)
    assert built["ray"][0] == built["local"][0]
    assert built["ray"][0]["rows"]
    assert built["ray"][1] == built["local"][1]  # the same fingerprint: the engine is operational
    assert any(line.startswith("ray: ") and "Dataset" in line for line in built["ray"][2])
    assert not any(line.startswith("ray: ") for line in built["local"][2])
    assert not ray.is_initialized()  # the asset's local Ray is stopped


@pytest.fixture(scope="module")
def session():
    """One local Ray of 2 CPUs for the comparisons below, shut down (every process of it stopped) at the end."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


WORDS = ("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud maple amber "
         "copper violet").split()
PLANTED = "alder birch cedar dogwood elm fir ginkgo hazel juniper larch linden magnolia oak pine poplar".split()
TEXT = st.lists(st.sampled_from(WORDS), min_size=2, max_size=30).map(" ".join)


@st.composite
def corpora(draw) -> list[dict]:
    """Rows of two sources with planted exact copies, copies differing in whitespace only, and near copies (one
    word changed; in every corpus, one exact and one near copy of a planted row), in a shuffled order, with row
    indexes that sort differently as text and as numbers."""
    planted = " ".join(PLANTED)  # distinct words: no step but the dedups touches it or its copies
    pairs = [("a planted question", planted), ("a planted question", planted),
             ("a planted question", planted.replace(PLANTED[-1], "hemlock"))]
    for question, answer in draw(st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=25)):
        pairs.append((question, answer))
        for how in draw(st.lists(st.sampled_from(["exact", "spaces", "near"]), max_size=2)):
            words = answer.split()
            words[draw(st.integers(0, len(words) - 1))] = draw(st.sampled_from(WORDS))
            pairs.append({"exact": (question, answer), "spaces": (f" {question}  ", answer.replace(" ", "  ")),
                          "near": (question, " ".join(words))}[how])
    order = draw(st.permutations(range(len(pairs))))
    rows = []
    for n, i in enumerate(order):
        question, answer = pairs[i]
        source = draw(st.sampled_from(["web", "books"]))
        kind = "sft" if i < 3 else draw(st.sampled_from(["sft", "sft", "preference"]))  # the planted three: sft
        messages = [{"role": "user", "content": question}] + ([] if kind == "preference" else
                                                               [{"role": "assistant", "content": answer}])
        chosen, rejected = (answer, f"not {answer}") if kind == "preference" else (None, None)
        rows.append(row(source, f"{source}:part{n % 2}.json:{n * 7}", kind, messages, chosen, rejected))
    return rows


def row(source: str, row_id: str, kind: str, messages: list[dict], chosen=None, rejected=None) -> dict:
    return {"source": source, "row_id": row_id, "format": "sharegpt",
            "content_hash": content_hash(messages, chosen, rejected, None, None), "kind": kind,
            "messages": json.dumps(messages), "chosen": chosen, "rejected": rejected, "tools": None, "label": None}


GENERATED_STEPS = steps({"step": "normalize", "strip_trailing_spaces": True}, {"step": "length", "min_chars": 12},
                        {"step": "repetition"}, {"step": "exact_dedup"},
                        {"step": "near_dedup", "threshold": 0.6, "min_chars": 20, "num_perm": 64},
                        {"step": "blocklist", "words": ["omega"]})


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=corpora())
def test_ray_and_local_write_the_same_bytes_on_generated_rows(session, tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("generated")
    on_ray, local, _, report = both(rows, folder, GENERATED_STEPS, ["web", "books"], batch_rows=BLOCK_ROWS)
    assert on_ray == local
    assert {"exact_duplicate", "near_duplicate"} <= set(report["quarantine_by_reason"])  # the planted copies


def test_a_chain_of_near_copies_goes_to_its_lowest_row_even_where_the_two_are_not_alike(session, tmp_path):
    """c ~ b ~ a with a and c below the threshold: one component, both copies removed, a measured against c (its
    lowest row) as local does, not against the row that joined it."""
    trees = PLANTED + "spruce willow yew aspen beech chestnut cypress ebony hawthorn holly laurel maple".split()
    b = trees[:2] + ["x1", "x2"] + trees[4:]
    c = b[:20] + ["y1", "y2"] + b[22:]
    answers = ["zzz unrelated words here please", " ".join(c), " ".join(trees), " ".join(b)]
    rows = [row("s", f"s:{n}", "sft", [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}])
            for n, answer in enumerate(answers)]
    near = steps({"step": "near_dedup", "threshold": 0.7, "num_perm": 64, "min_chars": 20})
    on_ray, local, _, _ = both(rows, tmp_path, near, ["s"], batch_rows=2)
    assert on_ray == local
    clusters = read_table(tmp_path / "ray", "clusters").to_pylist()
    assert [(c["kept_row_id"], c["removed_row_id"]) for c in clusters] == [("s:1", "s:2"), ("s:1", "s:3")]
    assert clusters[0]["similarity"] < 0.7  # s:2 joined through s:3


def test_the_second_near_pass_carries_each_candidate_to_its_shared_buckets_alone():
    """The chain's rows: each copy shares some of its LSH bands' buckets with the others, not all; the second pass
    emits a candidate's row (with its whole signature) in those buckets alone, and no row of the unrelated one."""
    trees = PLANTED + "spruce willow yew aspen beech chestnut cypress ebony hawthorn holly laurel maple".split()
    b = trees[:2] + ["x1", "x2"] + trees[4:]
    c = b[:20] + ["y1", "y2"] + b[22:]
    answers = ["zzz unrelated words here please", " ".join(c), " ".join(trees), " ".join(b)]
    batch = pa.Table.from_pylist([
        {**row("s", f"s:{n}", "sft", [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]),
         POSITION: n} for n, answer in enumerate(answers)])
    near = steps({"step": "near_dedup", "threshold": 0.7, "num_perm": 64, "min_chars": 20}).steps[0]
    bands, rows = lsh_params(0.7, 64)
    first = band_rows(batch, near, bands, rows)
    buckets = Counter((r["kind"], r["band"], r["key"]) for r in first.to_pylist())
    shared = sorted((r[POSITION], r["band"]) for r in first.to_pylist()
                    if buckets[(r["kind"], r["band"], r["key"])] > 1)
    codes = np.sort(np.concatenate([  # each bucket's rows through the first pass's function, as its group-by's
        shared_buckets(first.filter((pc.field("band") == band) & (pc.field("key") == pa.scalar(key, pa.uint64()))),
                       bands)["code"].to_numpy()
        for _, band, key in buckets]))
    candidates = sorted({position for position, _ in shared})
    assert candidates == [1, 2, 3] and len(shared) < len(candidates) * bands  # some bands shared, not all
    second = band_rows(batch, near, bands, rows, shared=codes)
    assert sorted(zip(second[POSITION].to_pylist(), second["band"].to_pylist())) == shared
    whole = signatures([near_text(parsed(r), "sft", near) for r in batch.to_pylist()], 64, near.shingle_size)
    assert all(np.array_equal(signature_matrix(second["signature"])[i], whole[p])
               for i, p in enumerate(second[POSITION].to_pylist()))


@pytest.mark.parametrize("seed", range(3))
def test_in_sorted_is_isin_and_sharing_finds_the_rows_of_the_codes(seed):
    rng = np.random.default_rng(seed)
    values, sorted_values = rng.integers(0, 50, 200), np.unique(rng.integers(0, 50, 20))
    assert np.array_equal(in_sorted(values, sorted_values), np.isin(values, sorted_values))
    assert not in_sorted(values, np.empty(0, np.int64)).any()
    bands, positions = 7, rng.integers(0, 60, 100)
    codes = np.unique(rng.integers(0, 50 * bands, 40))  # rows 50-59 have none: codes past the last
    assert np.array_equal(sharing(positions, codes, bands), np.isin(positions, np.unique(codes // bands)))
    assert not sharing(positions, np.empty(0, np.int64), bands).any()


@pytest.mark.parametrize("specs", [
    [{"step": "near_dedup", "min_chars": 100_000}, {"step": "exact_dedup"}],  # near_dedup compares no row
    [{"step": "length", "min_chars": 100_000}, {"step": "exact_dedup"}, {"step": "near_dedup"}],  # no row left
], ids=["nothing-compared", "nothing-left"])
def test_a_dedup_with_no_rows_to_compare_gives_local_s_tables(session, tmp_path, specs):
    rows = [row("s", f"s:{n}", "sft", [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}])
            for n, answer in enumerate(["one answer", "one answer", "another answer"])]
    on_ray, local, report, _ = both(rows, tmp_path, steps(*specs), ["s"], batch_rows=2)
    assert on_ray == local
    assert report["steps"][-1]["step"] == specs[-1]["step"]  # every dedup step is in the report, with its counts


@pytest.mark.parametrize("on_disk", [True, False], ids=["passes-on-disk", "passes-in-object-store"])
def test_ray_and_local_write_the_same_bytes_on_the_llamafactory_demo_files_with_every_step(session, tmp_path,
                                                                                          monkeypatch, on_disk):
    """The passes' rows as Parquet files in the work directory (this machine's Ray) or in the object store (a
    cluster's): the same bytes."""
    assert this_node(ray)  # the module's local Ray: files unless told otherwise
    if not on_disk:
        monkeypatch.setattr("engine.data.ray_engine.this_node", lambda _: None)
    passes, from_files = [], RayClean.from_files
    monkeypatch.setattr(RayClean, "from_files", lambda self, folder, files: (
        passes.append((folder.name, len(files), sorted(f.name for f in folder.iterdir()) == sorted(
            Path(f).name for f in files))), from_files(self, folder, files))[1])
    rows, quarantined, _ = ingest(resolve_sources(STOCK, "dataset_info.json", SELECTED))
    assert quarantined == []
    every_step = steps({"step": "normalize"}, {"step": "strip_html"},
                       {"step": "length", "min_chars": 20, "max_tokens": 400},
                       {"step": "repetition"}, {"step": "pii"}, {"step": "blocklist", "words": ["hello"]},
                       {"step": "exact_dedup"}, {"step": "near_dedup", "threshold": 0.7})
    count_tokens = lambda text: len(text.split())  # noqa: E731  # a token counter travels to Ray's workers
    on_ray, local, report, _ = both(rows, tmp_path, every_step, SELECTED, count_tokens=count_tokens, batch_rows=97)
    assert on_ray == local
    assert table_rows(tmp_path / "ray", "rows") > 97  # kept rows of several blocks
    removed = report["quarantine_by_reason"]
    assert removed["exact_duplicate"] > 0 and removed["near_duplicate"] > 0 and removed["blocklisted"] > 0
    assert removed["too_many_tokens"] > 0
    assert report["rewritten"] and report["pii_scrubbed"]  # html stripped, PII replaced: records to compare
    # on disk: the ordered rows in a file or more, each of the segment's batches' kept rows in a file of its own
    assert [name for name, _, _ in passes] == (["pass-ordered", "pass-segment-0"] if on_disk else [])
    assert all(whole for _, _, whole in passes)  # the files it reads are the folder's, no partial one
    assert not on_disk or passes[1][1] > 1


def test_passes_go_to_the_work_directory_only_where_the_cluster_is_this_machine_alone(session, monkeypatch):
    """A cluster of other machines, or this one reached as a Ray client: their workers do not see the work
    directory, so the passes stay in the object store."""
    me = ray.get_runtime_context().get_node_id()
    cluster = lambda *nodes: SimpleNamespace(  # noqa: E731
        nodes=lambda: [{"NodeID": node, "Alive": alive} for node, alive in nodes],
        get_runtime_context=ray.get_runtime_context)
    assert this_node(cluster((me, True), ("gone", False))) == me
    assert this_node(cluster((me, True), ("other", True))) is None
    assert this_node(cluster(("other", True), (me, False))) is None
    monkeypatch.setattr("ray.util.client.ray.is_connected", lambda: True)
    assert this_node(cluster((me, True))) is None


def test_engine_ray_without_ray_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    with pytest.raises(RecipeError) as error:
        require_ray()
    assert str(error.value) == ("data.engine: ray, but ray is not installed here: expected `pip install -e '.[ray]'` "
                                "(or data.engine: local)")

"""The CLI talks while it works and stops cleanly: progress lines during the data stages, one line and exit 130
on Ctrl-C (during training and during quantization), a did-you-mean for a mistyped --select, an eval that would
train asks for --build, and summaries wrapped between words."""

import os
import re
import signal
import sys
from pathlib import Path

import pytest

from engine.runtime import progress
from pipelines.cli import main
from pipelines.cli.result import wrapped
from tests.processes import started

STOP_LINE = r"tuneline: stopped during {asset}(?: at [^;]+)?; run the same command to resume"


def tuneline(tmp_path: Path, *args: str, interval: str = "2.0"):
    """A `tuneline` process in a session of its own (stopped with escalation on leaving), output under tmp_path."""
    env = os.environ | {"PYTHONPATH": os.getcwd(), "DAGSTER_HOME": str(tmp_path / "dagster"), "OMP_NUM_THREADS": "1",
                        "TUNELINE_PROGRESS_INTERVAL": interval}
    return started([sys.executable, "-m", "pipelines.cli", *args, "--artifact-root", str(tmp_path / "home")],
                   tmp_path / "logs", env=env)


def test_progress_says_one_line_per_interval_and_nothing_for_a_short_part(caplog):
    now = [0.0]
    with caplog.at_level("INFO", logger=progress.LOGGER.name):
        short = progress.Progress("dedup", total=5, stage="clean_data", interval=2.0, clock=lambda: now[0])
        for _ in range(5):
            now[0] += 0.1
            short.advance()
        assert caplog.messages == []
        now[0] = 0.0
        long = progress.Progress("reading alpaca", stage="raw_data", interval=2.0, clock=lambda: now[0])
        for _ in range(10):  # 10 s, 3 rows a second: a line at 2, 4, 6, 8, 10 s
            now[0] += 1.0
            long.advance(3)
    assert len(caplog.messages) == 5
    assert caplog.messages[0] == "raw_data: reading alpaca 6 rows, 3.0 rows/s"
    assert progress.where("raw_data") == "reading alpaca" and progress.where("clean_data") == "dedup"


def test_a_mistyped_select_gets_one_line_with_did_you_mean(tmp_path, capsys):
    assert main(["run", "--select", "sft_adaptr", "--artifact-root", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "tuneline: --select 'sft_adaptr': no asset named 'sft_adaptr'; did you mean 'sft_adapter'?"
    assert main(["run", "--select", "*merged_modle", "--artifact-root", str(tmp_path / "root")]) == 2
    assert "did you mean 'merged_model'?" in capsys.readouterr().err


def test_eval_with_nothing_built_names_what_it_would_train_and_asks_for_build(tmp_path, capsys):
    assert main(["eval", "--compare", "--artifact-root", str(tmp_path / "root")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tuneline: eval: sft_adapter, reward_model, dpo_adapter not trained for this recipe")
    assert "add --build" in line
    assert not list((tmp_path / "root" / "artifacts").glob("*/*"))  # nothing built


def test_a_long_summary_is_wrapped_between_words_never_cut():
    summary = ("2,430 rows from 4 sources; 57 quarantined (beyond_max_samples 40, too_short 17); reward model "
               "accuracy 0.62 on 128 pairs")
    lines = wrapped(summary, 58)
    assert len(lines) > 1 and all(len(line) <= 58 for line in lines)
    assert " ".join(lines) == summary  # every word whole, in order


@pytest.mark.slow
def test_data_stages_print_progress_lines(tmp_path):
    # interval 0: a line per counted item, so that the tiny recipe's sub-second parts say theirs every time (on
    # 20 rows per source, a few hundred lines)
    with tuneline(tmp_path, "run", "--select", "raw_data,clean_data,base_model,formatted_data",
                  "--set", "data.max_samples=20", "--set", "data.min_eval_pairs=2", interval="0") as run:
        code = run.wait(600)
        err = run.err()
    assert code == 0, err[-3000:]
    assert re.search(r"^raw_data: reading \w+ [\d,]+ rows, [\d.,]+ rows/s$", err, re.M), err[-3000:]
    assert re.search(r"^clean_data: \w+ [\d,]+/[\d,]+ rows, [\d.,]+ rows/s$", err, re.M), err[-3000:]
    assert re.search(r"^formatted_data: tokenizing [\d,]+/[\d,]+ rows, [\d.,]+ rows/s$", err, re.M), err[-3000:]


def stopped_cleanly(run, asset: str, signum: int) -> str:
    """SIGINT to the run's whole process group (as a terminal's Ctrl-C does), SIGTERM to the run alone (as a
    scheduler does); its exit code is 130 and its stderr ends with one stop line naming `asset`, no traceback."""
    if signum == signal.SIGINT:
        os.killpg(run.process.pid, signum)
    else:
        run.process.send_signal(signum)
    code = run.wait(180)
    err = run.err()
    assert code == 130, f"exit {code}: {err[-3000:]}"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(STOP_LINE.format(asset=asset), last), last
    return last


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_or_sigterm_during_sft_ends_with_one_line_and_exit_130(tmp_path, signum):
    with tuneline(tmp_path, "run", "--select", "*sft_adapter", "--set", "sft.save_steps=5",
                  "--set", "sft.logging_steps=1") as run:
        run.wait_for_output("sft: step ", 600, "SFT's first progress line")
        last = stopped_cleanly(run, "sft_adapter", signum)
    assert re.search(r" at step \d+/\d+;", last), last


@pytest.mark.slow
def test_ctrl_c_during_quantization_ends_with_one_line_and_exit_130(tmp_path):
    with tuneline(tmp_path, "run", "--select", "*gptq_model", interval="0") as run:
        run.wait_for_output("gptq_model: calibration", 900, "GPTQ's calibration")
        stopped_cleanly(run, "gptq_model", signal.SIGINT)
    assert not list((tmp_path / "home" / "artifacts" / "gptq_model").glob("[!.]*"))  # nothing published


def test_a_wait_on_another_runs_lock_is_said_once_then_periodically(tmp_path, monkeypatch):
    import threading
    import time
    from engine.store import home as home_module
    monkeypatch.setattr(home_module, "WAIT_REPORT", 0.2)
    home, said = home_module.Home(tmp_path), []

    def second_run() -> None:
        with home.lock("raw_data", "0123abcd", waiting=said.append):
            said.append("got it")
    with home.lock("raw_data", "0123abcd"):  # the other run, building it (flock: per open file, so this conflicts)
        waiter = threading.Thread(target=second_run, daemon=True)
        waiter.start()
        deadline = time.monotonic() + 30
        while len(said) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    waiter.join(30)
    assert not waiter.is_alive() and said[-1] == "got it"
    first, again = said[0], said[1]
    assert first.startswith("raw_data 0123abcd is being built by {") and f'"pid": {os.getpid()}' in first
    assert first.endswith("; waiting for it, then reusing it")
    assert re.fullmatch(r"raw_data 0123abcd is being built by \{.*\}; still waiting after \d+ s", again), again

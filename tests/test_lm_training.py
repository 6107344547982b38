"""trm_lm through the training machinery: EMA weights are what is saved and evaluated, evaluate.py reports the
held-out perplexity, a resumed run continues exactly, and torchrun with 2 Gloo processes trains like 1."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import read_set, run_evaluate
from tests._tiny_lm import build_text, last_step, load_decoder, metrics, pretrain, resume

# 4 epochs of ~9 steps, an evaluation after epochs 2 and 4, a training state every 5 steps, all states kept
RUN = ["global_batch_size=16", "epochs=4", "eval_interval=2", "lr=3e-3", "ema=True", "ema_rate=0.9",
       "checkpoint_interval=5", "checkpoint_keep=null"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_text(tmp_path_factory.mktemp("lm_text"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    directory = tmp_path_factory.mktemp("lm_runs") / "ema"
    pretrain(data, directory, RUN)
    return directory


def strip(state):
    return {k.removeprefix("_orig_mod."): v for k, v in state.items()}


def assert_same_weights(a, b, **tolerance):
    wa, wb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=tolerance.get("rtol", 0), atol=tolerance.get("atol", 0),
                                   msg=lambda m: f"{key}: {m}")


@pytest.mark.slow
def test_ema_weights_are_saved_and_evaluated(run):
    step = last_step(run)
    state = torch.load(run / f"state_{step}.pt", weights_only=True)
    saved = strip(torch.load(run / f"step_{step}", weights_only=True))
    assert state["ema"] and saved.keys() == state["model"].keys()
    for key, value in saved.items():
        assert torch.equal(value, state["ema"][key]), key
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["ema"]), "the average lags the weights"


@pytest.mark.slow
def test_evaluate_reports_token_weighted_perplexity(run, data, tmp_path):
    out = tmp_path / "eval"
    result = run_evaluate([f"checkpoint={run}", f"output_dir={out}", "device=cpu"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval_results.json").read_text())["results"]["fixed"]["all"]
    assert report["perplexity"] == pytest.approx(np.exp(report["token_loss"]))
    assert "perplexity" in result.stdout and f"{report['perplexity']:.2f}" in result.stdout

    # by hand: the saved weights over every held-out token
    test = read_set(data / "test", "all")
    decoder = load_decoder(run / f"step_{last_step(run)}")
    with torch.no_grad():
        logits = decoder(torch.from_numpy(np.array(test["inputs"])))
    labels = torch.from_numpy(np.array(test["labels"])).long()
    nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").item()
    assert report["tokens"] == labels.numel()
    assert report["token_loss"] == pytest.approx(nll / labels.numel(), rel=1e-5)
    # and the same figure the training run logged at its last evaluation (both score the EMA weights)
    logged = [r for r in metrics(run) if "all/token_loss" in r][-1]
    assert report["token_loss"] == pytest.approx(logged["all/token_loss"], rel=1e-5)
    assert report["perplexity"] < 100  # vocabulary 300: far below the uniform guess


@pytest.mark.slow
def test_evaluate_refuses_puzzle_only_options_for_a_language_model(run, tmp_path):
    result = run_evaluate([f"checkpoint={run}", "halt=adaptive"], cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "puzzle models" in lines[0], result.stderr[-2000:]


@pytest.mark.slow
def test_resume_from_an_interval_checkpoint_continues_exactly(run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    # As after a crash at step 11: the newest training state is step 10's, a checkpoint_interval one mid-pass.
    for path in list(resumed.glob("state_*.pt")) + list(resumed.glob("step_*")):
        if int(path.name.split("_")[1].split(".")[0]) > 10:
            path.unlink()
    result = resume(resumed / "state_10.pt")
    assert "Resumed" in result.stdout and "at step 10" in result.stdout
    assert metrics(resumed) == metrics(run), "losses, lr and evaluations equal at every step"
    assert_same_weights(resumed / f"step_{last_step(run)}", run / f"step_{last_step(run)}")


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one(run, data, tmp_path):
    two = tmp_path / "two"
    pretrain(data, two, RUN, nproc=2)
    assert sorted(p.name for p in two.glob("step_*")) == sorted(p.name for p in run.glob("step_*"))
    assert_same_weights(two / f"step_{last_step(run)}", run / f"step_{last_step(run)}", rtol=1e-4, atol=1e-5)
    one, two = ([r["train/lm_loss"] for r in metrics(d) if "train/lm_loss" in r] for d in (run, two))
    assert len(one) == len(two) > 20
    assert two == pytest.approx(one, rel=1e-4)

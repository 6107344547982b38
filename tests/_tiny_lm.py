"""What the language-model tests share: a generated corpus, the text dataset built from it, and pretrain.py runs of a
tiny trm_lm (subprocesses, as a user runs them)."""
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from dataset import build_text_dataset
from dataset.text import EOS_TOKEN
from tests.helpers import ENV, ROOT

HIDDEN, HEADS, LAYERS, LOOPS, SEQ_LEN, VOCAB = 32, 2, 2, 2, 24, 300
TINY_LM = ["arch=trm_lm", "evaluators=[]", "lr_warmup_steps=5", "device=cpu", f"arch.hidden_size={HIDDEN}",
           f"arch.num_heads={HEADS}", f"arch.num_layers={LAYERS}", f"arch.num_loops={LOOPS}", "arch.forward_dtype=float32"]
QUIET_ENV = dict(ENV, OMP_NUM_THREADS="1")


def write_corpus(path: Path, docs: int = 300, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = "the cat dog sat on a mat and ran to the big small red blue house tree".split()
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) + "." for _ in range(docs)))


def build_text(base: Path, docs: int = 300, tokenizer: Optional[Path] = None, name: str = "text") -> Path:
    """The corpus as a text dataset: a tokenizer of VOCAB tokens trained on it, or `tokenizer` reused."""
    write_corpus(base / "corpus.txt", docs)
    data = base / name
    reuse = ["--tokenizer", str(tokenizer)] if tokenizer else ["--vocab-size", str(VOCAB)]
    build_text_dataset.main(["--input", str(base / "corpus.txt"), "--output-dir", str(data), "--seq-len", str(SEQ_LEN),
                             "--test-fraction", "0.1", *reuse])
    return data


def write_gpt2_layout(directory: Path, vocab: Dict[str, int], merges: Sequence[Tuple[str, str]]) -> Path:
    """vocab.json + merges.txt as GPT-2 ships them (no tokenizer.json, no config: eos <|endoftext|>, no pad)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return directory


def trained_gpt2_layout(directory: Path, corpus: Path, vocab_size: int = VOCAB) -> Path:
    """A small byte-level BPE trained on `corpus`, saved in GPT-2's layout with <|endoftext|> as its last id."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train([str(corpus)], trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = dict(model["vocab"], **{EOS_TOKEN: len(model["vocab"])})
    return write_gpt2_layout(directory, vocab, [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]])


def full_size_gpt2_layout(directory: Path) -> Path:
    """GPT-2's shape without its data: the 256 byte symbols, 50,000 merges (pairs of them) and <|endoftext|> last,
    50,257 ids in all."""
    from tokenizers import pre_tokenizers
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [(a, b) for a in alphabet for b in alphabet][:50_000]
    vocab = {symbol: i for i, symbol in enumerate(alphabet + [a + b for a, b in merges])}
    vocab[EOS_TOKEN] = len(vocab)
    return write_gpt2_layout(directory, vocab, merges)


def pretrain_command(data: Path, run: Path, extra: Sequence[str] = (), nproc: int = 1) -> List[str]:
    args = [f"data_paths=[{data}]", *TINY_LM, f"+checkpoint_path={run}", *extra]
    if nproc == 1:
        return [sys.executable, str(ROOT / "pretrain.py"), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--rdzv_backend=c10d",
            "--rdzv_endpoint=localhost:0", "--nnodes=1", str(ROOT / "pretrain.py"), *args]


def pretrain(data: Path, run: Path, extra: Sequence[str] = (), nproc: int = 1) -> subprocess.CompletedProcess:
    result = subprocess.run(pretrain_command(data, run, extra, nproc), cwd=run.parent, env=QUIET_ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def resume(state_file: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "pretrain.py"), f"resume={state_file}"], cwd=state_file.parent.parent,
                            env=QUIET_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(run: Path) -> List[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def last_step(run: Path) -> int:
    return max(int(p.name.split("_")[1]) for p in run.glob("step_*"))


def load_decoder(weights: Path):
    """The training-side decoder of a step_<N> file, rebuilt from the run's all_config.yaml as pretrain.py built it."""
    from omegaconf import OmegaConf
    from dataset.format import read_metadata
    from models.checkpoint_io import load_reference_checkpoint
    from models.recursive_reasoning.trm_lm import LMLossHead, TRMLanguageModel
    config = OmegaConf.to_container(OmegaConf.load(weights.parent / "all_config.yaml"), resolve=True)
    metadata = read_metadata(Path(config["data_paths"][0]) / "train")
    arch = {k: v for k, v in config["arch"].items() if k not in ("name", "loss")}
    head = LMLossHead(TRMLanguageModel({**arch, "vocab_size": metadata.vocab_size, "seq_len": metadata.seq_len}))
    load_reference_checkpoint(head, str(weights))
    return head.model.decoder.eval()

"""Char-LSTM on tiny Shakespeare: quality at a fixed training compute, and training throughput.

    python benchmarks/char_lstm.py                    # full run (~2 min on 2 idle CPU cores)
    python benchmarks/char_lstm.py --quick            # ~20 s smoke check (numbers not meaningful)
    python benchmarks/char_lstm.py --tflop 3.65       # another training-compute budget
    python benchmarks/char_lstm.py --skip-throughput  # part 1 only (e.g. to tune hyper-parameters)
    python benchmarks/char_lstm.py --text PATH        # another text (default: tinyshakespeare.txt)
    python benchmarks/char_lstm.py --skip-quality --hidden 512 --layers 2 --batch 16 --seq 64
                                                      # throughput of another shape

Data: tiny Shakespeare (`--text PATH`, default benchmarks/data/tinyshakespeare.txt; get it from
common.TEXT_URL, Karpathy's char-rnn repository) when present (else the course's own `shakespeare_text()`,
which is a different text, so the anchors below do not apply), split as nanoGPT's shakespeare_char
does: the first 90% of characters for training, the last 10% for validation, the character
vocabulary taken from the whole text (65 characters).

1. Quality at fixed compute. Anchor: nanoGPT's small CPU config (a 0.8M-parameter GPT, 2000 iters of
   batch 12 x block 64 = 1.54M tokens, ~7.3 TFLOP) reaches val loss 1.88 nats/char as nanoGPT's README
   reports it: an untuned demo, scored on random 64-character windows (position j sees j characters),
   so it fixes the compute, not a comparable score (benchmarks/transformer.py re-runs GPTs). We train
   `aigc_lib.rnn.CharLSTM` with `train_char_lstm` (the shared `fit` loop) for as many steps as fit
   in the budget and score it with `evaluate_nats_per_char` on the validation text (target: <= 1.60).
   Training compute is counted as the usual 3 x forward FLOPs per token x tokens processed
   (backward ~ 2x forward), with `CharLSTM.flops_per_token()`: 2 FLOPs per multiply-add of the gate
   and output matrix multiplies; the embedding lookup, biases and element-wise gate math are left
   out (as the 6N rule leaves them out for the GPT). steps = floor(budget / (3 * F * batch * seq)).
   The validation loss is computed with the LSTM state carried through the text (stateful TBPTT
   evaluation, as char-rnn does); with the default --eval-batch 1 this is the exact sequential NLL
   of the whole validation text (more streams are faster and each starts from a zero state).

   Default config (tuned by pilot runs at 7.3 TFLOP; spread between seeds ~0.01 nats): 1 layer x
   LSTM(384), embed 64, no dropout/weight decay, forget-gate bias initialised to 0, batch 16 x seq 64
   (1,024 tokens/step, 1,666 steps = 1.71M tokens), AdamW lr 8e-3, 100 warmup steps, cosine to 0.1x.
   At this budget (~1.7 passes over the text) small 1-layer LSTMs beat 2-layer ones (the compute
   buys more tokens), high learning rates and many small steps help, and regularisation is not
   needed yet. Pilot val losses (two seeds each): batch 16 x 64, bias 0: 1.516, 1.516; batch 32 x 32,
   bias 0: 1.505, 1.514; batch 32 x 32 with the library's default bias 1: 1.532, 1.545. The bias-1
   init (`CharLSTMConfig.forget_bias`) helps long-range memory in long training; on a budget of under
   two passes it costs ~0.03 nats. 16 x 64 is the default because its fewer, longer sequences give
   the fused kernel the clearer throughput edge over a Python time loop (part 2).

2. Throughput. Three models of the same size (the quality config), trained on the same TBPTT batches
   with AdamW and gradient clipping, timed side by side in interleaved repeats (medians reported):
     fast     -- CharLSTM (nn.LSTM, one fused oneDNN/cuDNN kernel over the sequence) trained
                 through `train_char_lstm`, i.e. our full loop (fit, scheduler, logging);
     cell     -- the same network built from nn.LSTMCell, stepping over time in a Python loop;
     plain    -- Embedding -> nn.LSTM -> Linear trained with a bare 6-line loop (no fit): the
                 reference for "our loop adds no overhead".
   Achieved GFLOP/s = 3 x F x tokens/s, reported as a share of the CPU's fp32 matmul peak (median
   GFLOP/s of a large torch.matmul, measured in the same interleaved rounds).

Timings on a shared machine are noisy: compare the ratios printed in one run, not absolute numbers
across runs. When another process keeps a core busy, multi-threaded LSTM training can slow down
dramatically (each time step ends in an OpenMP barrier): the script warns; use --threads 1.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import DEFAULT_TEXT, TEXT_URL, Data, char_split, check_load, matmul_gflops
from torch import nn

from aigc_lib.data import shakespeare_text
from aigc_lib.rnn import (
    CharLSTM,
    CharLSTMConfig,
    evaluate_nats_per_char,
    generate_text,
    tbptt_batches,
    train_char_lstm,
)

NANOGPT_CPU = {"tflop": 7.3, "val_loss": 1.88}  # nanoGPT small CPU config (0.8M-param GPT, 2000 iters)
TARGET = 1.60  # nats/char at 7.3 TFLOP


# --------------------------------------------------------------------------------------- data


def load_data(path: Path | None) -> Data:
    """The text (file, or the course's own Shakespeare as a fallback), tokenized and split 90/10."""
    if path is not None and path.exists():
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        print(
            f"NOTE: {path} not found: using aigc_lib.data.shakespeare_text() instead "
            f"(a different text: the nanoGPT / char-rnn anchors do not apply; tiny Shakespeare is at {TEXT_URL})"
        )
        text, source = shakespeare_text("all"), "aigc_lib.data.shakespeare_text('all')"
    return char_split(text, source)


# --------------------------------------------------------------------------------------- part 1


def make_config(args: argparse.Namespace, vocab_size: int) -> CharLSTMConfig:
    return CharLSTMConfig(
        vocab_size,
        embed_dim=args.embed,
        hidden_size=args.hidden,
        num_layers=args.layers,
        dropout=args.dropout,
        forget_bias=args.forget_bias,
    )


def quality_at_fixed_compute(args: argparse.Namespace, data: Data) -> dict:
    """Train a CharLSTM within `args.tflop` TFLOP of training compute; return what it reached."""
    torch.manual_seed(args.seed)
    model = CharLSTM(make_config(args, data.tokenizer.vocab_size))
    fpt = model.flops_per_token()
    tokens_per_step = args.batch * args.seq
    steps = int(args.tflop * 1e12 // (3 * fpt * tokens_per_step))
    if steps < 1:
        raise SystemExit(f"--tflop {args.tflop} is less than one step of this config")
    tokens = steps * tokens_per_step
    print(
        f"\n== 1. quality at {args.tflop:g} TFLOP: {model.config}, {model.num_params():,} params, "
        f"{fpt / 1e6:.3f} MFLOP/token forward"
    )
    print(
        f"   batch {args.batch} x seq {args.seq}, {steps} steps = {tokens / 1e6:.3f}M tokens "
        f"({tokens / len(data.train_ids):.2f} passes over the train text), lr {args.lr:g} "
        f"(warmup {args.warmup}, cosine to {args.min_lr_ratio:g}x), wd {args.wd:g}"
    )
    start = time.perf_counter()
    history = train_char_lstm(
        model,
        data.train_ids,
        steps,
        batch_size=args.batch,
        seq_len=args.seq,
        lr=args.lr,
        grad_clip=args.clip,
        weight_decay=args.wd,
        warmup_steps=args.warmup,
        min_lr_ratio=args.min_lr_ratio,
        progress=not args.no_progress,
    )
    wall = time.perf_counter() - start
    start = time.perf_counter()
    val = evaluate_nats_per_char(model, data.val_ids, batch_size=args.eval_batch, seq_len=256)
    eval_s = time.perf_counter() - start
    last = history.losses[-max(1, len(history.losses) // 20) :]  # last ~5% of the logged steps
    result = {
        "config": model.config,
        "params": model.num_params(),
        "fpt": fpt,
        "steps": steps,
        "tokens": tokens,
        "tflop": 3 * fpt * tokens / 1e12,
        "val": val,
        "wall": wall,
        "tok_s": tokens / wall,
        "train_loss": statistics.fmean(last),
        "eval_s": eval_s,
    }
    print(
        f"   spent {result['tflop']:.3f} TFLOP in {wall:.1f} s ({result['tok_s']:,.0f} tokens/s, "
        f"{3 * fpt * result['tok_s'] / 1e9:.1f} GFLOP/s); train loss (end) {result['train_loss']:.4f}"
    )
    print(
        f"   val loss {val:.4f} nats/char = {val / math.log(2):.4f} bits/char "
        f"(eval {eval_s:.1f} s, {args.eval_batch} streams, state carried)"
    )
    if steps < len(tbptt_batches(data.train_ids, args.batch, args.seq)):
        print(
            "   NOTE: less than one pass over the text: the model met a zero LSTM state only at "
            "step 0, and the val pass and the sample start from one; an undertrained model can be "
            "far worse there than its training loss says (a smoke check, not a result)"
        )
    if args.sample:
        gen = torch.Generator().manual_seed(args.seed)
        text = generate_text(model, data.tokenizer, "ROMEO:", args.sample, temperature=0.8, generator=gen)
        print("   sample (T=0.8):\n" + "\n".join("   | " + line for line in text.splitlines()))
    return result


# --------------------------------------------------------------------------------------- part 2


class PlainLSTM(nn.Module):
    """The reference: Embedding -> nn.LSTM -> Linear, nothing else."""

    def __init__(self, c: CharLSTMConfig):
        super().__init__()
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.lstm = nn.LSTM(c.embed_dim, c.hidden_size, c.num_layers, batch_first=True)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)

    def forward(self, idx, state=None):
        out, state = self.lstm(self.embed(idx), state)
        return self.head(out), state


class CellLSTM(nn.Module):
    """The same network from nn.LSTMCell: a Python loop over time steps (and layers)."""

    def __init__(self, c: CharLSTMConfig):
        super().__init__()
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        sizes = [c.embed_dim] + [c.hidden_size] * (c.num_layers - 1)
        self.cells = nn.ModuleList(nn.LSTMCell(d, c.hidden_size) for d in sizes)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)

    def forward(self, idx, state=None):  # state: (h, c), each (L, B, H), as nn.LSTM's
        B, T = idx.shape
        H = self.cells[0].hidden_size
        if state is None:
            zeros = idx.new_zeros((len(self.cells), B, H), dtype=torch.float32)
            state = (zeros, zeros)
        hs, cs = list(state[0].unbind(0)), list(state[1].unbind(0))
        x = self.embed(idx)  # (B, T, E)
        outs = []
        for t in range(T):
            inp = x[:, t]
            for k, cell in enumerate(self.cells):
                hs[k], cs[k] = cell(inp, (hs[k], cs[k]))
                inp = hs[k]
            outs.append(inp)
        out = torch.stack(outs, dim=1)  # (B, T, H)
        return self.head(out), (torch.stack(hs), torch.stack(cs))


def bare_loop(model: nn.Module, batches, steps: int, lr: float, clip: float) -> None:
    """The minimal TBPTT training loop: what `train_char_lstm` should cost no more than."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99))
    state = None
    for step in range(steps):
        x, y, reset = batches(step)
        logits, state = model(x, None if reset else state)
        state = tuple(s.detach() for s in state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()


def throughput(args: argparse.Namespace, data: Data) -> dict:
    """Tokens/s of the three models and the matmul peak, interleaved repeats, medians."""
    config = make_config(args, data.tokenizer.vocab_size)
    torch.manual_seed(args.seed)
    models = {"fast": CharLSTM(config), "plain": PlainLSTM(config), "cell": CellLSTM(config)}
    fpt = models["fast"].flops_per_token()
    batches = tbptt_batches(data.train_ids, args.batch, args.seq)
    n = args.tp_steps
    tokens = n * args.batch * args.seq

    def run(name: str, steps: int) -> None:
        if name == "fast":
            train_char_lstm(
                models["fast"],
                data.train_ids,
                steps,
                batch_size=args.batch,
                seq_len=args.seq,
                lr=args.lr,
                grad_clip=args.clip,
                warmup_steps=0,
                log_every=min(50, steps),
                progress=False,
            )
        else:
            bare_loop(models[name], batches, steps, args.lr, args.clip)

    print(
        f"\n== 2. throughput: {config}, batch {args.batch} x seq {args.seq}, {n} steps "
        f"({tokens:,} tokens) per timing, {args.repeats} interleaved repeats, "
        f"{torch.get_num_threads()} threads"
    )
    for name in models:  # warm-up: oneDNN primitive creation, allocator
        run(name, 2)
    times: dict[str, list[float]] = {name: [] for name in models}
    peak = []
    for r in range(args.repeats):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            start = time.perf_counter()
            run(name, n)
            times[name].append(time.perf_counter() - start)
        peak.append(matmul_gflops(args.matmul_n, args.matmul_reps))
        print(
            f"   repeat {r + 1}: "
            + ", ".join(f"{k} {tokens / t[-1]:,.0f} tok/s" for k, t in times.items())
            + f", matmul {peak[-1]:.0f} GFLOP/s"
        )
    peak_med = statistics.median(peak)
    rows = {}
    for name, t in times.items():
        tok_s = tokens / statistics.median(t)
        gflops = 3 * fpt * tok_s / 1e9
        rows[name] = {"tok_s": tok_s, "gflops": gflops, "share": gflops / peak_med}
    return {"rows": rows, "peak": peak_med, "peak_all": peak, "fpt": fpt}


# --------------------------------------------------------------------------------------- main


def summary(args: argparse.Namespace, data: Data, q: dict | None, tp: dict | None) -> None:
    print("\n" + "=" * 78 + "\nSUMMARY  (" + data.source + ")")
    if q is not None:
        c = q["config"]
        print(
            f"  config            : {c.num_layers} x LSTM({c.hidden_size}), embed {c.embed_dim}, "
            f"dropout {c.dropout:g}, {q['params']:,} params; batch {args.batch} x seq {args.seq}, "
            f"lr {args.lr:g}, wd {args.wd:g}"
        )
        print(
            f"  training compute  : {q['tflop']:.3f} TFLOP (budget {args.tflop:g}; "
            f"3 x {q['fpt'] / 1e6:.3f} MFLOP/token x {q['tokens'] / 1e6:.3f}M tokens, {q['steps']} steps)"
        )
        verdict = ""
        if math.isclose(args.tflop, NANOGPT_CPU["tflop"]):
            verdict = "  -> target <= 1.60: " + ("MET" if q["val"] <= TARGET else "NOT met")
            verdict += f"  (nanoGPT's CPU demo at 7.3 TFLOP, its own windowed evaluation: {NANOGPT_CPU['val_loss']})"
        print(f"  val loss          : {q['val']:.4f} nats/char = {q['val'] / math.log(2):.4f} bits/char{verdict}")
        print(f"  training wall time: {q['wall']:.1f} s, {q['tok_s']:,.0f} tokens/s")
    if tp is not None:
        rows, fast = tp["rows"], tp["rows"]["fast"]["tok_s"]
        print(
            f"  fp32 matmul peak  : {tp['peak']:.0f} GFLOP/s (median of "
            f"{len(tp['peak_all'])}: {', '.join(f'{p:.0f}' for p in tp['peak_all'])})"
        )
        print(f"  {'model':<32}{'tokens/s':>10}{'GFLOP/s':>9}{'% peak':>8}{'fast / this':>13}")
        labels = {
            "fast": "CharLSTM + train_char_lstm",
            "plain": "plain nn.LSTM + bare loop",
            "cell": "nn.LSTMCell Python loop",
        }
        for name, row in rows.items():
            print(
                f"  {labels[name]:<32}{row['tok_s']:>10,.0f}{row['gflops']:>9.1f}"
                f"{100 * row['share']:>7.1f}%{fast / row['tok_s']:>12.2f}x"
            )
        vs_cell = fast / rows["cell"]["tok_s"]
        vs_plain = fast / rows["plain"]["tok_s"]
        print(
            f"  targets: fast >= 2x cell: {vs_cell:.2f}x {'MET' if vs_cell >= 2 else 'NOT met'}; "
            f"fast within 10% of plain: {vs_plain:.2f}x {'MET' if vs_plain >= 0.9 else 'NOT met'}"
        )
    print("=" * 78)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="plain-text corpus")
    p.add_argument(
        "--tflop",
        type=float,
        default=None,
        help=f"training-compute budget (default {NANOGPT_CPU['tflop']}; 1.5 with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="~1 minute smoke check")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    g = p.add_argument_group("model and training (defaults: the tuned 7.3 TFLOP config)")
    g.add_argument("--hidden", type=int, default=384)
    g.add_argument("--layers", type=int, default=1)
    g.add_argument("--embed", type=int, default=64)
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument(
        "--forget-bias",
        type=float,
        default=0.0,
        help="initial forget-gate bias (CharLSTMConfig.forget_bias; the library default is 1)",
    )
    g.add_argument("--batch", type=int, default=16)
    g.add_argument("--seq", type=int, default=64)
    g.add_argument("--lr", type=float, default=8e-3)
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--wd", type=float, default=0.0)
    g.add_argument("--clip", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--eval-batch",
        type=int,
        default=1,
        help="parallel streams in the val pass (1: the exact sequential NLL of the text)",
    )
    g.add_argument("--sample", type=int, default=300, help="characters to sample (0: none)")
    g.add_argument("--no-progress", action="store_true")
    t = p.add_argument_group("throughput")
    t.add_argument("--repeats", type=int, default=7)
    t.add_argument("--tp-steps", type=int, default=20, help="training steps per timing")
    t.add_argument("--matmul-n", type=int, default=2048)
    t.add_argument("--matmul-reps", type=int, default=10)
    args = p.parse_args(argv)
    if args.tflop is None:
        args.tflop = 1.5 if args.quick else NANOGPT_CPU["tflop"]
    if args.quick:
        args.repeats, args.tp_steps = min(args.repeats, 3), min(args.tp_steps, 5)
        args.matmul_reps, args.sample = min(args.matmul_reps, 3), min(args.sample, 100)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check_load()
    data = load_data(args.text)
    print(
        f"text: {data.source}: {len(data.train_ids):,} train / {len(data.val_ids):,} val "
        f"characters, vocab {data.tokenizer.vocab_size}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    q = None if args.skip_quality else quality_at_fixed_compute(args, data)
    tp = None if args.skip_throughput else throughput(args, data)
    summary(args, data, q, tp)


if __name__ == "__main__":
    main()

"""Chapter 08's text-to-speech model and WaveNet: quality against training compute, and speed.

    python benchmarks/speech.py                      # FastSpeech at 350 / 700 / 1,400 steps (+ kernel 3 at 1,500)
    python benchmarks/speech.py --steps 3000 --kernel3  # chosen points, no kernel-3 run
    python benchmarks/speech.py --quick              # a smoke check (numbers not meaningful)

Every run is the recipe `08.fastspeech` (recipes/ch08.py: same model, data, optimizer and seed) with only
the number of steps changed, each with its own warm-up + cosine schedule, checkpointed under
checkpoints/bench_speech_*.pt; `--kernel3` adds the same model with the FFT blocks' convolution kernel 3
(FastSpeech 1's) instead of 9 (FastSpeech 2's, the recipe's), the comparison behind the recipe's choice.
Scored by one protocol, the chapter's (`speech.tts.evaluate_tts`): the 100 held-out numbers per language; MCD
(13 mel-cepstra) with the teacher's durations frame by frame and with
predicted durations after DTW; total-duration error; the number judge (recipe `08.judge`, trained on four
other voices) on the teacher's audio, on the teacher's mel through Griffin-Lim, and on the model's audio.
Compute: training FLOPs (FlopCounterMode over one step of the recipe's batch, times the steps).
Throughput, measured alone on this machine: mel frames/s of the acoustic model, the real-time factor
(seconds of compute per second of audio) of the acoustic model and of Griffin-Lim (60 iterations),
and the WaveNet's cached vs naive generation (samples/s; batch 1 and 8; median of 3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import check_load, matmul_gflops
from torch.utils.flop_counter import FlopCounterMode

from aigc_lib import recipes
from aigc_lib.recipes import ch08
from aigc_lib.speech import fastspeech as fs
from aigc_lib.speech import tts
from aigc_lib.speech import wavenet as wn


def step_flops(model: fs.FastSpeech, data: fs.SpeechBatchData, batch: int) -> float:
    idx = torch.arange(batch)
    with FlopCounterMode(display=False) as counter:
        fs.fastspeech_loss(model, data.batch(idx))["loss"].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def throughput(model: fs.FastSpeech, corpus: tts.NumberCorpus) -> dict:
    ids = [corpus.vocab.encode(u.phonemes) for u in corpus.test["en"] + corpus.test["zh"]]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        mels, _ = tts.synthesize_mels(model, ids)
        times.append(time.perf_counter() - start)
    frames = sum(len(m) for m in mels)
    audio_s = frames * tts.MEL.hop / tts.MEL.sample_rate
    start = time.perf_counter()
    tts.vocode(mels[:40])
    gl_s = (time.perf_counter() - start) / (sum(len(m) for m in mels[:40]) * tts.MEL.hop / tts.MEL.sample_rate)
    return {"frames_per_s": frames / statistics.median(times), "rtf_acoustic": statistics.median(times) / audio_s,
            "rtf_griffin_lim": gl_s}  # fmt: skip


def wavenet_speed(model: wn.WaveNet, n: int) -> dict:
    out = {}
    prompt = torch.randint(0, 256, (8, model.receptive_field), generator=torch.Generator().manual_seed(0))
    for batch in (1, 8):
        t = {False: [], True: []}
        for rep in range(3):
            for cached in (False, True):
                start = time.perf_counter()
                wn.generate(model, n, prompt[:batch], cached=cached, generator=torch.Generator().manual_seed(rep))
                t[cached].append(time.perf_counter() - start)
        naive, cached = statistics.median(t[False]), statistics.median(t[True])
        out[f"batch{batch}"] = {"naive_samples_per_s": batch * n / naive, "cached_samples_per_s": batch * n / cached,
                                "speedup": naive / cached}  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="*", default=[350, 700, 1400], help="FastSpeech training steps")
    p.add_argument("--kernel3", type=int, nargs="*", default=[1500], help="steps of the same model with kernel 3")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    check_load()
    peak = matmul_gflops()
    print(f"fp32 matmul peak: {peak:.0f} GFLOP/s")
    budget = "smoke" if args.quick else "standard"
    steps = [5] if args.quick else args.steps
    corpus = tts.number_corpus()
    judge_recipe = recipes.get("08.judge")
    judge, _ = judge_recipe.run(tts.judge_corpus(ch08.JUDGE_VARIANTS, judge_recipe.sizes_for(budget)["per_voice"]),
                                budget=budget, progress=False)  # fmt: skip
    judge.eval()
    sizes = recipes.get("08.fastspeech").sizes_for(budget)
    results = {"peak_gflops": peak, "runs": []}
    kernel3 = [] if args.quick else args.kernel3
    for kernel, n in [(sizes["kernel"], n) for n in steps] + [(3, n) for n in kernel3]:
        start = time.perf_counter()
        model, _ = ch08.train_tts({**sizes, "kernel": kernel, "steps": n}, corpus, "cpu",
                                  checkpoint=f"checkpoints/bench_speech_k{kernel}_{n}.pt", progress=False)  # fmt: skip
        train_s = time.perf_counter() - start
        flops = step_flops(model, corpus.data, sizes["batch"]) * n
        model.eval()
        row = {"kernel": kernel, "steps": n, "train_tflop": flops / 1e12, "train_s": train_s}
        for lang in ("en", "zh"):
            row[lang] = tts.evaluate_tts(model, corpus.vocab, corpus.test[lang], corpus.held_out[lang], judge)
        print(json.dumps(row), flush=True)
        results["runs"].append(row)
        if kernel == sizes["kernel"] and n == recipes.get("08.fastspeech").sizes_for(budget)["steps"]:
            results["throughput"] = throughput(model, corpus)  # the chapter's model
    wavenet, _ = recipes.get("08.wavenet").run(tts.wavenet_codes(corpus.train), budget=budget, progress=False)
    results["wavenet"] = wavenet_speed(wavenet.eval(), 40 if args.quick else 300)
    print(json.dumps({k: results.get(k) for k in ("throughput", "wavenet")}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

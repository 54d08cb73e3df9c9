"""``npdecode demo``: a guided tour of what the beam search guarantees, each claim shown live."""

from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console
from rich.rule import Rule

from npdecode.cli.options import at_least
from npdecode.cli.render import console, hypotheses_table
from npdecode.models.chars import EOS as NAME_END, decode, encode
from npdecode.models.pretrained import load_target
from npdecode.models.scripted import ScriptedLM
from npdecode.models.tinylm import TinyLM
from npdecode.search.beam import batched_beam_search

EOS = 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="walk through beam search's guarantees on small models and a trained one",
        description="Run the scenarios that show what npdecode's beam search guarantees "
                    "(greedy equivalence, batch independence, finished beams keeping their "
                    "place, the length penalty's direction) on TinyLM and on scripted models "
                    "whose right answer is known by hand, explaining each in a few lines, "
                    "then complete name prefixes with the shipped character-level model.")
    p.add_argument("--seed", type=at_least(0), default=0, help="TinyLM weight seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = console()
    model = TinyLM(vocab_size=1000, d_model=64, seed=args.seed)
    for scene in (batch_of_prompts, greedy_equivalence, batch_independence, eos_retention,
                  length_penalty):
        scene(out, model)
    trained_names(out)
    return 0


def heading(out: Console, title: str, *lines: str) -> None:
    out.print()
    out.print(Rule(title, align="left"))
    for line in lines:
        out.print(line)


def batch_of_prompts(out: Console, model: TinyLM) -> None:
    heading(out, "1. Batched beam search on TinyLM",
            "Two prompts of different lengths, 4 hypotheses each, one model call per step "
            "for every live beam of both prompts (the KV cache is reordered by beam parent).")
    prompts = [[3, 14, 159], [11, 22, 33, 44, 55]]
    results = batched_beam_search(model, prompts, beam_width=4, max_new_tokens=8, alpha=0.6,
                                  eos_token_id=EOS)
    for b, hyps in enumerate(results):
        out.print(hypotheses_table(f"prompt {prompts[b]}", hyps))


def greedy_equivalence(out: Console, model: TinyLM) -> None:
    heading(out, "2. Beam width 1 without length penalty is greedy decoding")
    prompt, seq = [5, 17, 33], [5, 17, 33]
    for _ in range(8):
        seq.append(int(np.argmax(model.forward(np.array([seq]))[0])))
    (best,), = batched_beam_search(model, [prompt], beam_width=1, max_new_tokens=8, alpha=0.0)
    out.print(f"argmax step by step: {seq[3:]}")
    out.print(f"beam search, K=1:    {best.tokens}   "
              f"{'identical' if best.tokens == seq[3:] else 'DIFFERENT'}")


def batch_independence(out: Console, model: TinyLM) -> None:
    heading(out, "3. A prompt's result does not depend on its batch",
            "Prompt [3, 14, 15] decoded alone, then beside a longer prompt (so it is "
            "left-padded in the cache): the hypotheses agree.")
    kw = dict(beam_width=3, max_new_tokens=8, alpha=0.6, eos_token_id=EOS)
    alone = batched_beam_search(model, [[3, 14, 15]], **kw)[0]
    batch = batched_beam_search(model, [[3, 14, 15], [9, 26, 5, 35, 8, 97, 93]], **kw)[0]
    same = [h.tokens for h in alone] == [h.tokens for h in batch]
    diff = max(abs(a.score - b.score) for a, b in zip(alone, batch))
    out.print(f"same tokens: {'yes' if same else 'NO'}; largest score difference: {diff:.1e}")


def eos_retention(out: Console, model: TinyLM) -> None:
    heading(out, "4. A finished beam keeps its place in the pool",
            "Scripted model: at step 1 the only beam offers EOS at log-prob -3.0 and token 1 "
            "at -4.0; after [1], token 1 follows at -1.0. Beam width 2, alpha 0.6.",
            "[EOS] scores -3.0 / 1^0.6 = -3.000; [1, 1] scores -5.0 / 2^0.6 = -3.299.")
    scripted = ScriptedLM(vocab_size=100, prompt_len=3,
                          script={(): {EOS: -3.0, 1: -4.0}, (1,): {1: -1.0, EOS: -20.0}})
    hyps = batched_beam_search(scripted, [[4, 1, 2]], beam_width=2, max_new_tokens=2,
                               alpha=0.6, eos_token_id=EOS)[0]
    out.print(hypotheses_table("result", hyps))
    out.print("The finished [EOS] wins. A decoder that moves finished beams out of the pool "
              "would have filled both slots with unfinished beams and returned [1, 1] first.")


def length_penalty(out: Console, model: TinyLM) -> None:
    heading(out, "5. The length penalty's direction",
            "Two finished hypotheses: short [EOS] at -2.0 (1 token) and long [1, 1, EOS] at "
            "-3.0 (3 tokens). With negative log-probs a larger alpha favours the longer one.")
    scripted = ScriptedLM(vocab_size=4, prompt_len=1, default={EOS: -0.5}, script={
        (): {EOS: -2.0, 1: -1.0, 2: -5.0}, (1,): {1: -1.0, EOS: -6.0, 2: -6.0},
        (1, 1): {EOS: -1.0, 1: -6.0, 2: -6.0}})
    for alpha in (0.0, 2.0):
        hyps = batched_beam_search(scripted, [[3]], beam_width=64, max_new_tokens=3,
                                   alpha=alpha, eos_token_id=EOS)[0]
        pair = [h for h in hyps if h.tokens in ([EOS], [1, 1, EOS])]
        shown = ", then ".join(f"{h.tokens} ({h.score:.3f})" for h in pair)
        out.print(f"alpha {alpha}: {shown}")




def trained_names(out: Console) -> None:
    heading(out, "6. Beam search on a trained model: completing names",
            "CharGPT, the character-level model shipped with npdecode (trained on 32k names), "
            "completes three prefixes; the end-of-name token finishes a hypothesis. Beam "
            "width 4, alpha 0.6.")
    model = load_target()
    prefixes = ["em", "chr", "zo"]
    results = batched_beam_search(model, [encode(p) for p in prefixes], beam_width=4,
                                  max_new_tokens=10, alpha=0.6, eos_token_id=NAME_END)
    for prefix, hyps in zip(prefixes, results):
        out.print(hypotheses_table(f"prefix {prefix!r}", hyps,
                                   decode=lambda toks, p=prefix: p + decode(toks)))

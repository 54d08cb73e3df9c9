"""``npdecode train``: retrain a character-level CharGPT on the bundled names and save it."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

from npdecode.cli.options import at_least, file_path, finite, integer
from npdecode.memory import check_fits
from npdecode.models.chargpt import CharGPTConfig, count_params
from npdecode.train import (RECIPES, TrainResult, bigram_loss, check_decay, load_names,
                            split_names, train)

DESCRIPTION = """\
Train a character-level CharGPT on the bundled corpus of 32,033 first names, in NumPy (a
hand-written backward pass and Adam with linear learning-rate decay), and write its weights
to a compressed .npz that CharGPT.load reads.

The names are split 90/10 into train and validation (seeded by --split-seed; the shipped
models use 0). Each name is trained on as "." + name + ".", where "." (id 0) starts a name
and ends it. At the end the command prints the validation loss in nats per character,
next to a count-based bigram baseline (add-one smoothing) fit on the same training names.

--model picks a recipe: 'target' or 'draft', the two models shipped in npdecode/weights.
A recipe is a model size plus its training settings (steps, batch size, learning rate,
weight decay). Every recipe setting can be overridden; with the defaults (--seed 0,
--split-seed 0) the command reruns the training of the shipped weights."""


def _recipes_text() -> str:
    """The recipes' settings: what the options default to for each --model."""
    lines = ["recipes (the defaults of the size and training options for each --model):"]
    for name, r in sorted(RECIPES.items()):
        c = r.config
        lines.append(f"  {name}: --d-model {c.d_model} --layers {c.n_layers} --heads {c.n_heads} "
                     f"--d-ff {c.d_ff} --context {c.max_context}")
        lines.append(f"  {' ' * len(name)}  --steps {r.steps} --batch-size {r.batch_size} "
                     f"--lr {r.lr:g} --weight-decay {r.weight_decay:g}")
    return "\n".join(lines)


EPILOG = _recipes_text() + """

A recipe's full run takes minutes (the target about 2 on an idle core, more under load). On
a terminal a progress bar shows the step, the loss and the time left; when the output goes to
a pipe or a file, a line every 10% of the steps gives the step, the loss, the time so far and
the time left. The loss shown is a moving average of the minibatch losses.

If the loss becomes NaN or infinite (training diverged, usually from too high a --lr), the
command stops and writes no weights.

examples:
  npdecode train --model draft --output draft.npz
  npdecode train --model target --steps 2000 --output quick.npz
  npdecode train --d-model 48 --layers 2 --output mine.npz"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train", help="retrain a character-level CharGPT on the bundled names",
        description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--model", choices=sorted(RECIPES), default="target",
                   help="recipe to start from (size, steps, batch size, learning rate, "
                        "weight decay); default: target")
    p.add_argument("--output", "-o", type=file_path("a file name ending in .npz"), default=None,
                   metavar="PATH",
                   help="where to write the weights (.npz); default: ./<model>.npz")
    p.add_argument("--overwrite", action="store_true",
                   help="replace PATH if it exists (otherwise an existing file is an error)")
    p.add_argument("--steps", type=at_least(1), metavar="N", help="optimisation steps")
    p.add_argument("--batch-size", type=at_least(1), metavar="N", help="names per minibatch")
    p.add_argument("--lr", type=finite, metavar="RATE",
                   help="peak learning rate (linear warm-up, then linear decay to 5%%)")
    p.add_argument("--weight-decay", type=finite, metavar="W",
                   help="AdamW weight decay of matrices and embeddings (0: plain Adam)")
    p.add_argument("--seed", type=at_least(0), default=0, metavar="N",
                   help="seed of the initial weights and of the minibatch draws; default: 0")
    p.add_argument("--split-seed", type=at_least(0), default=0, metavar="N",
                   help="seed of the 90/10 train/validation split; default: 0")
    p.add_argument("--d-model", type=integer, metavar="N", help="width of the residual stream")
    p.add_argument("--layers", type=integer, metavar="N", help="number of transformer blocks")
    p.add_argument("--heads", type=integer, metavar="N",
                   help="attention heads per block (must divide --d-model)")
    p.add_argument("--d-ff", type=integer, metavar="N", help="hidden width of the ReLU MLP")
    p.add_argument("--context", type=integer, metavar="N",
                   help="context length: positions the model has embeddings for")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="training precision; float32 is about twice as fast. The saved "
                        "weights are float32 either way. default: float32")
    p.add_argument("--no-progress", action="store_true",
                   help="print no progress (neither the bar nor the progress lines)")
    p.set_defaults(func=run, size_options=SIZE_OPTIONS)


SIZE_OPTIONS = "--batch-size, --context, --d-model, --d-ff, --layers or --heads"


def check_memory(config: CharGPTConfig, batch: int, dtype: str, positions: int,
                 names: int) -> None:
    """Refuse settings whose training arrays cannot fit in memory (an estimate: per position
    and layer the attention rows and the residual-width and MLP-width activations, then the
    logits; for the target recipe about the peak resident size measured, 1.3 GB at
    --batch-size 4096), plus four arrays the size of the parameters (the parameters, their
    gradients and Adam's two moment estimates). Minibatches are cut to their longest name,
    so they span at most ``positions`` (the longest name's predictions) of the context; the
    examples, ``names`` rows of int64 inputs and targets, span all of it."""
    T, L, H = min(config.max_context, positions), config.n_layers, config.n_heads
    per_position = L * (2 * H * T + 10 * config.d_model + 3 * config.d_ff) + 4 * config.vocab_size
    params = count_params(config)
    examples = 2 * 8 * names * config.max_context
    check_fits(np.dtype(dtype).itemsize * (batch * T * per_position + 4 * params) + examples,
               SIZE_OPTIONS)


def _settings(args: argparse.Namespace, names: list[str]):
    """The recipe with the command line's overrides applied, checked (for training on
    ``names``)."""
    recipe = RECIPES[args.model]
    overrides = {"d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads,
                 "d_ff": args.d_ff, "max_context": args.context}
    try:
        config = dataclasses.replace(recipe.config,
                                     **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as err:
        raise _translate(err) from None
    steps = recipe.steps if args.steps is None else args.steps
    batch = recipe.batch_size if args.batch_size is None else args.batch_size
    lr = recipe.lr if args.lr is None else args.lr
    wd = recipe.weight_decay if args.weight_decay is None else args.weight_decay
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"--lr must be a positive number, got {lr}")
    if not math.isfinite(wd) or wd < 0:
        raise ValueError(f"--weight-decay must be a number >= 0, got {wd}")
    try:
        check_decay(lr, wd)
    except ValueError:
        given = "" if args.weight_decay is not None else f" (the {args.model} recipe's)"
        raise ValueError(f"--lr {lr:g} with --weight-decay {wd:g}{given} would scale the "
                         f"weights by {1 - lr * wd:g} every step (AdamW multiplies them by 1 - "
                         f"lr x weight decay); lower --lr, or pass --weight-decay 0") from None
    check_memory(config, batch, args.dtype, longest_name(names), len(names))
    return config, steps, batch, lr, wd


def longest_name(names: list[str]) -> int:
    """Predictions of the longest name: its letters and the end of the name."""
    return max(len(n) for n in names) + 1


def _output_path(args: argparse.Namespace) -> Path:
    path = args.output if args.output is not None else Path(f"{args.model}.npz")
    if path.is_dir():
        raise ValueError(f"--output {path} is a directory; give a file name ending in .npz")
    if path.name == ".npz":  # Path sees a hidden file with no suffix
        raise ValueError(f"--output {str(path)!r} has no name before .npz; give one, such as "
                         f"{str(path.with_name(args.model + '.npz'))!r}")
    if path.suffix != ".npz":
        raise ValueError(f"--output must end in .npz, got {str(path)!r}")
    if path.exists() and not args.overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it or choose another "
                         f"--output")
    if not path.parent.is_dir():
        raise ValueError(f"the directory of --output does not exist: {path.parent}")
    existed = path.exists()
    try:  # find out now, not after training, that the file cannot be written
        with open(path, "ab"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write --output {path}: {err.strerror}") from None
    if not existed:
        path.unlink()
    return path


def run(args: argparse.Namespace) -> int:
    """Train, save, and report the losses."""
    names = load_names()
    config, steps, batch, lr, wd = _settings(args, names)
    path = _output_path(args)
    longest = longest_name(names)
    if config.max_context < longest:
        print(f"note: --context {config.max_context} is shorter than the longest name "
              f"({longest} predictions); long names are cut into windows", file=sys.stderr)
    print(f"training {args.model} recipe: d_model={config.d_model} layers={config.n_layers} "
          f"heads={config.n_heads} d_ff={config.d_ff} context={config.max_context}, "
          f"{steps} step{'s' if steps != 1 else ''} x {batch} names, lr {lr:g}, "
          f"weight decay {wd:g}, seed {args.seed}")
    t0 = time.perf_counter()
    result = _train_with_progress(config, steps, batch, lr, wd, args, names)
    seconds = time.perf_counter() - t0
    if not math.isfinite(result.val_loss):
        raise Diverged(f"the validation loss is {result.val_loss}", lr)
    result.model.save(path)
    train_names, val_names = split_names(names, seed=args.split_seed)
    baseline = bigram_loss(train_names, val_names)
    print(f"parameters:       {result.model.num_params:,}")
    print(f"validation loss:  {result.val_loss:.4f} nats/char")
    print(f"bigram baseline:  {baseline:.4f} nats/char (add-one smoothing)")
    uniform = math.log(result.model.config.vocab_size)
    if result.val_loss >= uniform:  # worse than guessing every character alike
        print(f"warning: the validation loss is above {uniform:.2f} nats/char, that of guessing "
              f"every character alike: training diverged or did not learn; try a lower --lr "
              f"or more --steps", file=sys.stderr)
    print(f"time:             {seconds:.0f} s (training, then the validation loss)")
    print(f"wrote {path}")
    return 0


def _translate(err: ValueError) -> ValueError:
    """A config error phrased with the command-line option names."""
    msg = str(err)
    for field, option in (("d_model", "--d-model"), ("n_layers", "--layers"),
                          ("n_heads", "--heads"), ("d_ff", "--d-ff"),
                          ("max_context", "--context")):
        msg = msg.replace(f"CharGPTConfig.{field}", option).replace(field, option)
    return ValueError(msg)


class Diverged(ValueError):
    """Training produced a loss that is NaN or infinite: no weights are written."""

    def __init__(self, what: str, lr: float):
        super().__init__(f"training diverged ({what}); no weights were written; try a lower "
                         f"--lr than {lr:g}")


def _train_with_progress(config: CharGPTConfig, steps: int, batch: int, lr: float, wd: float,
                         args: argparse.Namespace, names: list[str]) -> TrainResult:
    """Run ``train``, stopping at the first loss that is not finite. Progress: a rich
    progress bar on a terminal, a plain line every 10% of the steps otherwise (a pipe or a
    log file), nothing with --no-progress."""
    kwargs = dict(steps=steps, batch_size=batch, lr=lr, weight_decay=wd, seed=args.seed,
                  split_seed=args.split_seed, dtype=np.dtype(args.dtype), names=names)
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    t0 = time.perf_counter()

    def show_line(step: int, loss: float) -> None:
        if step * 10 // steps != (step - 1) * 10 // steps:  # the step completing a tenth
            elapsed = time.perf_counter() - t0
            end = ("; computing the validation loss" if step == steps else
                   f", about {elapsed * (steps - step) / step:.0f} s left")
            print(f"step {step}/{steps}: loss {loss:.3f}, {elapsed:.0f} s elapsed{end}",
                  flush=True)

    def show_nothing(step: int, loss: float) -> None:
        pass

    console = Console()
    display = contextlib.nullcontext()
    if args.no_progress:
        show = show_nothing
    elif not console.is_terminal:
        show = show_line
    else:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn())
        display = Progress(*columns, console=console)
        task = display.add_task("training", total=steps, loss=float("nan"))

        def show(step: int, loss: float) -> None:
            if step % 20 == 0 or step in (1, steps):
                display.update(task, completed=step, loss=loss)
            if step == steps:  # train() goes on to the validation loss
                display.update(task, description="validating")

    smooth = [None]

    def on_step(step: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise Diverged(f"the loss is {loss} at step {step}", lr)
        # An exponential moving average: a single minibatch's loss is noisy.
        smooth[0] = loss if smooth[0] is None else 0.98 * smooth[0] + 0.02 * loss
        show(step, smooth[0])

    # A diverging step warns of overflows and NaNs before on_step sees its loss; the command
    # reports the divergence itself, once.
    with display, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return train(config, on_step=on_step, **kwargs)

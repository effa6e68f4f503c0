"""``feedbackloop simulate``: replay a labeled dataset through the live loop.

The worker's own :class:`~streams.loop.Loop` (scorer, router with its policy
and budget, trainer with its consensus and learner) runs on a labeled dataset,
with no Kafka, so a team can tune the policy on its own history before turning
it on: what the simulator says is what the worker does. The protocol, the same
for every strategy:

* a share of the data (``--holdout``) is kept out for evaluation; the rest is
  the stream, replayed once in an order fixed by the seed (the same order for
  every strategy of a seed, so strategies are compared on the same stream);
* each item is a prediction event whose random draw is fixed by its position
  and the seed, as the router fixes it by the event id (the same draws for
  every strategy of a seed);
* the shadow model predicts each item before any label is revealed; the
  strategy decides from those signals; only bought labels are learned;
* held-out accuracy is measured along the way, at fixed label counts;
* the target is a fraction (``--target``) of the accuracy of the same model
  learned from every label of the stream; ``labels_to_target`` is the number of
  labels bought when held-out accuracy first reaches it.

``random`` (the control slice alone, uniform sampling) is always run as the
baseline, once per seed over the whole stream, so the labels it needs are never
cut short by a budget (see :func:`summarize`); ``default`` is the policy as it
runs live.

Annotators (:mod:`feedbackloop.annotators_sim`) are perfect by default: every
bought label is the truth. With ``--annotator-error`` and ``--overlap`` a panel
of simulated annotators labels each bought item, their labels are combined by
the live :class:`~streams.labels.consensus.Consensus`, and the model learns the
consensus label weighted by its confidence, as the live learner does. Every
strategy, random included, meets the same annotators making the same mistakes
on the same items. The budget counts labels: an item costs ``overlap`` labels
or more. Each run records ``label_error_rate``, the share of learned labels that
differ from the truth; the target stays the all-labels accuracy on true labels.

>>> result = simulate(load("phishing"), budgets=[0.2], strategies=["default"], seeds=1, jobs=1, progress=False)
>>> run = result["runs"][0]
>>> sorted(run["strategies"]), abs(run["strategies"]["default"]["spend_ratio"] - 1) <= 0.05
(['default', 'random'], True)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from feedbackloop import simulate_sets
from feedbackloop.annotators_sim import NOISES, Annotation, Panel
from feedbackloop.datasets import RIVER_DATASETS, SYNTHETIC_DATASETS, TEXT_DATASETS, Dataset, label_sets, load
from feedbackloop.protocol import STRATEGIES, budget_labels, checkpoints, first_reaching, split
from streams.events import label as label_event
from streams.evaluation.stopping import StoppingSignal
from streams.learning.committee import Committee
from streams.learning.models import KNN, TextLogistic, make
from streams.loop import Loop
from streams.selection import signals

# -- one replay ----------------------------------------------------------------


def _model(kind: str, committee: bool, seed: int):
    model = make(kind, offline=True)
    return Committee(model, size=5, seed=seed) if committee else model


def _predictions(model, test, cache: dict | None = None) -> list:
    if isinstance(model, KNN):
        cache = {} if cache is None else cache
        if cache.get("width") != len(model.keys):
            cache["X"] = np.stack([model.vector(x) for x, _ in test])
            cache["width"] = len(model.keys)
        proba = model.predict_proba_many(cache["X"])
        if proba.shape[1] == 0:
            return [None] * len(test)
        return np.array(model.classes)[proba.argmax(1)].tolist()
    if isinstance(model, TextLogistic) and len(model.classes) > 1:
        cache = {} if cache is None else cache
        if "encoded" not in cache:
            cache["encoded"] = model.encode([x for x, _ in test])
        return np.array(model.classes)[model.predict_proba_many(cache["encoded"]).argmax(1)].tolist()
    return [signals.top_label(model.predict_proba_one(x)) for x, _ in test]


def _accuracy(model, test, cache: dict | None = None) -> float:
    predicted = _predictions(model, test, cache)
    return sum(p == y for p, (_, y) in zip(predicted, test)) / len(test)


def replay(stream, test, strategy: str, budget_labels: int, seed: int, kind: str = "knn",
           classes: int | None = None, grid: list[int] | None = None, annotation: Annotation | None = None,
           text: bool = False) -> dict:
    """Run one strategy over one stream through the live :class:`~streams.loop.Loop`;
    return its learning curve and spend (measured at the label counts of
    ``grid``, :func:`checkpoints` by default).

    Item ``t`` of the stream is the prediction event ``t`` (its draw is fixed
    by that id and the seed, the same for every strategy); the loop scores it
    with its learner's live model, routes it, and a bought item's labels go
    back to it as labels of the routed task, so the live consensus settles
    them and the live learner learns them (control labels included: the
    replay has its own test set).

    ``budget_labels`` counts labels: with ``annotation.overlap`` K, a bought
    item costs K labels (more when the consensus asks for another). ``learned``
    maps each bought item's stream position to the label the model learned;
    ``wrong`` says, in the same order, whether that label was wrong.
    """
    options = dict(STRATEGIES[strategy])
    committee = options.get("uncertainty") == "committee"
    annotation = annotation or Annotation()
    per_item = annotation.labels_per_item
    panel = None if annotation.perfect else Panel(annotation, stream, seed, text)
    # uniform sampling needs no prediction (unless the adaptive consensus compares the first label with it)
    blind = strategy == "random" and annotation.overlap != 0
    loop = Loop.build(budget_fraction=min(1.0, budget_labels / per_item / len(stream)), control_fraction=None,
                      seed=seed, overlap=annotation.overlap, model=_model(kind, committee, seed),
                      hold_out_control=False, live_scoring=not blind, prequential=not blind, n_classes=classes,
                      label_set=sorted({y for _, y in stream}), policy_options=options)
    model = loop.trainer.learner.model
    grid = grid or checkpoints(budget_labels)
    curve, spent, events, cache = [], 0, 0, {}
    learned: dict[int, str] = {}  # stream position -> label learned, in the order bought
    items = 0
    stopping, stop_at = StoppingSignal(), None
    next_check = 0
    for t, (x, y) in enumerate(stream):
        if spent + per_item > budget_labels:
            break
        now = t * 1000
        event = {"event_id": str(t), "item_id": str(t), "ts": now, "model_name": "", "model_version": "",
                 "predicted_label": None, "probabilities": {}, "features": x, "text": None, "context": {}}
        routed = loop.route(loop.score("Prediction", event, now).candidates[0], now)
        if not routed.tasks:
            continue
        items += 1
        answers = [("annotator", y)] if panel is None else panel.answers(t)
        settled, paid, drift = _annotate(loop, routed.tasks[0], answers, perfect=panel is None,
                                         max_labels=budget_labels - spent, now=now)
        spent += paid
        events += drift
        if settled is not None:
            learned[t] = settled["label"]
        while next_check < len(grid) and grid[next_check] <= spent:
            predicted = _predictions(model, test, cache)
            curve.append((spent, sum(p == y for p, (_, y) in zip(predicted, test)) / len(test)))
            # the stop set is the held-out items' features: no label of theirs is used
            if stopping.update(next_check, predicted, labels=spent)["stop"] and stop_at is None:
                stop_at = spent
            next_check += 1
    wrong = [label != stream[t][1] for t, label in learned.items()]
    if not curve or curve[-1][0] != spent:
        curve.append((spent, _accuracy(model, test, cache)))
    return {"curve": curve, "labels_spent": spent, "seen": len(stream), "drift_events": events,
            "stop_at": stop_at, "selected": dict(loop.router.policy.selected), "items": items, "learned": learned,
            "wrong": wrong, "label_error_rate": sum(wrong) / len(wrong) if wrong else None}


def _annotate(loop: Loop, task, answers, perfect: bool, max_labels: int, now: int):
    """Give a routed task to the loop, then its annotators' ``answers`` one label
    at a time until the live consensus settles (at most ``max_labels``); return
    the consensus row (None if it did not settle), the labels paid and the
    drift events. A perfect annotator's label is the truth, final as a
    reviewer's: learned once, unweighted."""
    loop.take("LabelingTask", task, now)
    paid = drift = 0
    for annotator, answer in answers:
        if paid >= max_labels:
            break
        out = loop.take("Label", label_event(event_id=f"{task['event_id']}:{annotator}", task_id=task["task_id"],
                                             item_id=task["item_id"], label=answer, annotator_id=annotator, ts=now,
                                             tier="reviewer" if perfect else "annotator"), now)
        paid += 1
        drift += sum(table == "drift_events" for table, _ in out.rows)
        settled = [row for table, row in out.rows if table == "consensus_labels"]
        if settled:
            return settled[0], paid, drift
    return None, paid, drift


def reference(stream, test, kind: str = "knn", seed: int = 0) -> float:
    """Held-out accuracy of the model learned from every label of the stream."""
    model = make(kind, offline=True)
    for x, y in stream:
        model.learn_one(x, y)
    return _accuracy(model, test)


# -- the experiment ----------------------------------------------------------


def _task(args):
    kind_of, dataset, holdout, seed, extra = args
    stream, test = split(dataset, holdout, seed)
    if kind_of == "reference":
        return args, reference(stream, test, extra["model"], seed)
    annotators = {"annotation": extra["annotation"], "text": dataset.text}
    if kind_of == "random":  # random sampling of the whole stream: what random needs, whatever the budget
        sizes = [budget_labels(b, len(stream)) for b in extra["budgets"]] + [len(stream)]
        grid = sorted(set().union(*(checkpoints(n) for n in sizes)))
        return args, replay(stream, test, "random", len(stream), seed, extra["model"], extra["classes"], grid,
                            **annotators)
    return args, replay(stream, test, extra["strategy"], budget_labels(extra["budget"], len(stream)), seed,
                        extra["model"], extra["classes"], **annotators)


def _mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def within(run: dict, labels: int) -> dict:
    """A run of random sampling over the whole stream, cut at ``labels``: what
    random sampling with that budget would have bought (the same in distribution)."""
    curve = [(n, acc) for n, acc in run["curve"] if n <= labels]
    if not curve or curve[-1][0] < labels:
        curve.append((labels, float(np.interp(labels, *zip(*run["curve"])))))
    spent = min(labels, run["labels_spent"])
    cut = {}
    if run.get("items"):  # the items, and the labels learned, that the cut's labels bought
        items = round(run["items"] * spent / run["labels_spent"])
        wrong = run["wrong"][:round(len(run["wrong"]) * items / run["items"])]
        cut = {"items": items, "label_error_rate": sum(wrong) / len(wrong) if wrong else None}
    return {**run, "curve": curve, "labels_spent": spent, **cut}


def summarize(dataset: Dataset, budget: float, target: float, refs: dict[int, float], results: dict,
              random_runs: dict[int, dict], annotation: Annotation | None = None) -> dict:
    """Per strategy: labels to target, final accuracy, spend (labels, and the
    items they bought), the share of learned labels that were wrong, and the mean curve;
    ``per_seed``, each seed's labels to target, final accuracy and ratio to random
    (for the median and the worst case over seeds).

    ``random_runs`` are random sampling over the whole stream, per seed: the
    labels random *needs* are read there, with no budget to cut them short.
    A strategy that does not reach the target within its budget on a seed is
    counted as needing what random needs on that seed (never fewer than it
    spent): no saving is claimed where none was seen.
    """
    seeds = sorted(refs)
    need, hits = {}, {}
    for seed in seeds:
        run = random_runs[seed]
        hits[seed] = first_reaching(run["curve"], target * refs[seed])
        need[seed] = hits[seed] if hits[seed] is not None else run["labels_spent"]
    n_stream = random_runs[seeds[0]]["seen"]
    labels = budget_labels(budget, n_stream)
    results = {**results, "random": {seed: within(random_runs[seed], labels) for seed in seeds}}
    out = {}
    for strategy, per_seed in results.items():
        reached, counted, finals, spent = [], [], [], []
        for seed in seeds:
            r = per_seed[seed]
            hit = hits[seed] if strategy == "random" else first_reaching(r["curve"], target * refs[seed])
            reached.append(hit)
            counted.append(need[seed] if strategy == "random" else
                           hit if hit is not None else max(r["labels_spent"], need[seed]))
            finals.append(r["curve"][-1][1])
            spent.append(r["labels_spent"])
        grid = sorted({n for seed in seeds for n, _ in per_seed[seed]["curve"]})
        curve = [[n, statistics.fmean(float(np.interp(n, *zip(*per_seed[s]["curve"]))) for s in seeds)]
                 for n in grid]
        ltt, ltt_sd = _mean_sd(reached)
        acc, acc_sd = _mean_sd(finals)
        out[strategy] = {
            "labels_to_target": ltt, "labels_to_target_sd": ltt_sd,
            "reached": sum(h is not None for h in reached), "labels_counted": statistics.fmean(counted),
            "final_accuracy": acc, "final_accuracy_sd": acc_sd,
            "labels_spent": statistics.fmean(spent), "spend_ratio": None,
            "drift_events": statistics.fmean(per_seed[s]["drift_events"] for s in seeds),
            "stop_recommended_at": _mean_sd([per_seed[s]["stop_at"] for s in seeds])[0],
            "curve": curve, "per_seed": {"labels_to_target": reached, "final_accuracy": finals,
                                         "ratio_to_random": [c / need[s] if need[s] else None
                                                             for c, s in zip(counted, seeds)]},
            "items_bought": _mean_sd([per_seed[s].get("items") for s in seeds])[0],
            "label_error_rate": _mean_sd([per_seed[s].get("label_error_rate") for s in seeds])[0],
        }
    random_need = out["random"]["labels_counted"]
    for r in out.values():
        r["spend_ratio"] = r["labels_spent"] / labels
        r["ratio_to_random"] = r["labels_counted"] / random_need if random_need else None
    return {"dataset": dataset.name, "budget": budget, "budget_labels": labels, "stream": n_stream,
            "target": target, "all_labels_accuracy": statistics.fmean(refs.values()),
            "seeds": len(seeds), "strategies": out, "annotators": (annotation or Annotation()).as_dict()}


def simulate(dataset: Dataset | list[Dataset], budgets: list[float], strategies: list[str] | None = None,
             seeds: int = 10, target: float = 0.95, holdout: float = 0.2, model: str | None = None,
             jobs: int | None = None, progress: bool = True, annotation: Annotation | None = None) -> dict:
    """Replay every (dataset, budget, strategy, seed) with the annotators of
    ``annotation`` (default: perfect); return the summaries."""
    annotation = annotation or Annotation()
    datasets_ = dataset if isinstance(dataset, list) else [dataset]
    strategies = [s for s in dict.fromkeys(strategies or ["default"]) if s != "random"]
    for s in strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}: choose from {', '.join(STRATEGIES)}")
    tasks = []
    for d in datasets_:
        kind = model or ("tfidf" if d.text else "knn")
        classes = len({y for _, y in d.rows})
        for seed in range(seeds):
            tasks.append(("reference", d, holdout, seed, {"model": kind}))
            tasks.append(("random", d, holdout, seed, {"model": kind, "budgets": budgets, "classes": classes,
                                                        "annotation": annotation}))
            for b in budgets:
                for s in strategies:
                    tasks.append(("replay", d, holdout, seed, {"model": kind, "strategy": s, "budget": b,
                                                               "classes": classes, "annotation": annotation}))
    done: dict = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="simulating", unit="run", file=sys.stderr)
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1:
        for t in tasks:
            args, result = _task(t)
            done[_key(args)] = result
            bar and bar.update(1)
    else:
        with ProcessPoolExecutor(jobs) as pool:
            futures = [pool.submit(_task, t) for t in tasks]
            for f in as_completed(futures):
                args, result = f.result()
                done[_key(args)] = result
                bar and bar.update(1)
    bar and bar.close()
    runs = []
    for d in datasets_:
        refs = {seed: done[(d.name, "reference", seed, None, None)] for seed in range(seeds)}
        random_runs = {seed: done[(d.name, "random", seed, None, None)] for seed in range(seeds)}
        for b in budgets:
            results = {s: {seed: done[(d.name, "replay", seed, s, b)] for seed in range(seeds)} for s in strategies}
            runs.append(summarize(d, b, target, refs, results, random_runs, annotation))
    return {"target": target, "holdout": holdout, "seeds": seeds, "runs": runs, "annotators": annotation.as_dict()}


def _key(args):
    kind_of, d, _, seed, extra = args
    return (d.name, kind_of, seed, extra.get("strategy"), extra.get("budget"))


# -- output --------------------------------------------------------------------


def _fmt(mean, sd, spec="{:.0f}"):
    if mean is None:
        return "never"
    return f"{spec.format(mean)} ± {spec.format(sd or 0.0)}"


def table(result: dict) -> str:
    """The runs as a plain-text table."""
    lines = [f"{'dataset':<14} {'budget':>7} {'strategy':<17} {'labels to target':>18} {'reached':>8} "
             f"{'vs random':>9} {'final accuracy':>16} {'spent':>7}"]
    for run in result["runs"]:
        b = run["budget"]
        budget = f"{b:.0%}" if b <= 1 else f"{b:.0f}"
        for name, r in run["strategies"].items():
            ratio = "" if r["ratio_to_random"] is None else f"{r['ratio_to_random']:.2f}"
            lines.append(
                f"{run['dataset']:<14} {budget:>7} {name:<17} {_fmt(r['labels_to_target'], r['labels_to_target_sd']):>18}"
                f" {r['reached']:>4}/{run['seeds']:<3} {ratio:>9} "
                f"{_fmt(r['final_accuracy'], r['final_accuracy_sd'], '{:.3f}'):>16} {r['spend_ratio']:>6.0%}")
        lines.append(f"{'':<14} {'':>7} target {run['target']:.0%} of all-labels accuracy "
                     f"{run['all_labels_accuracy']:.3f}, {run['budget_labels']} labels of {run['stream']}")
        annotation = _annotation(run)
        learned = "" if annotation.perfect else "; labels learned: " + "; ".join(
            f"{name} {r['items_bought']:.0f} items, {r['label_error_rate']:.1%} wrong"
            for name, r in run["strategies"].items() if r["label_error_rate"] is not None)
        lines.append(f"{'':<14} {'':>7} {annotation.describe()}{learned}")
    return "\n".join(lines)


def _annotation(run: dict) -> Annotation:
    """The annotators a run was measured with."""
    a = run["annotators"]
    return Annotation(tuple(a["annotator_error"]), a["overlap"], a["noise"])


def markdown(result: dict, strategy: str = "default") -> str:
    """``strategy`` against random as a Markdown table, with the median ratio per budget."""
    head = ("| dataset | budget | labels to target: " + strategy + " | random | ratio | final accuracy: "
            + strategy + " | random | spend |\n|---|---|---|---|---|---|---|---|")
    lines, ratios = [head], {}
    for run in result["runs"]:
        a, r = run["strategies"][strategy], run["strategies"]["random"]
        ratios.setdefault(run["budget"], []).append(a["ratio_to_random"])
        cell = lambda s: f"{_fmt(s['labels_to_target'], s['labels_to_target_sd'])} ({s['reached']}/{run['seeds']})"
        acc = lambda s: _fmt(s["final_accuracy"], s["final_accuracy_sd"], "{:.3f}")
        lines.append(f"| {run['dataset']} | {run['budget']:.0%} | {cell(a)} | {cell(r)} | "
                     f"{a['ratio_to_random']:.2f} | {acc(a)} | {acc(r)} | {a['spend_ratio']:.1%} |")
    lines.append("")
    lines.append("| budget | median ratio over datasets |\n|---|---|")
    lines += [f"| {b:.0%} | {statistics.median(v):.2f} |" for b, v in ratios.items()]
    if result["runs"]:
        lines += ["", f"Annotators: {_annotation(result['runs'][0]).describe()}; "
                      "budget and labels to target count labels."]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Learning curves (mean over seeds), one panel per dataset and budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    cols = min(3, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, run in zip(axes.flat, runs):
        for name, r in run["strategies"].items():
            n, acc = zip(*r["curve"])
            ax.plot(n, acc, label=name, lw=2 if name in ("default", "random") else 1)
        ax.axhline(run["target"] * run["all_labels_accuracy"], color="grey", ls="--", lw=1)
        b = run["budget"]
        ax.set_title(f"{run['dataset']}, budget {b:.0%}" if b <= 1 else f"{run['dataset']}, {b:.0f} labels")
        ax.set_xlabel("labels bought")
        ax.set_ylabel("held-out accuracy")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(runs):]:
        ax.set_visible(False)
    if runs:
        fig.suptitle(_annotation(runs[0]).describe(), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line --------------------------------------------------------------


def _budgets(text: str) -> list[float]:
    return [float(b) for b in text.split(",") if b.strip()]


def _rates(text: str) -> tuple[float, ...]:
    return tuple(float(e) for e in text.split(",") if e.strip())


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``simulate`` subcommand to an argparse ``subparsers``."""
    p = subparsers.add_parser(
        "simulate", help="replay a labeled dataset through the selection policy, offline",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Runs the live loop (scoring, policy and budget, consensus, learner) on a labeled dataset "
                    "with no Kafka, and reports how many labels each strategy needs to reach a target accuracy, "
                    "against random sampling.")
    p.add_argument("dataset", nargs="+",
                   help=f"{', '.join(RIVER_DATASETS + tuple(TEXT_DATASETS) + SYNTHETIC_DATASETS)}, or a CSV/JSONL/Parquet path")
    p.add_argument("--label-column", help="label column of a file dataset; classes joined by '|' make it "
                                           "multi-label (one-vs-rest model, scored by micro-F1 on held-out items)")
    p.add_argument("--text-column", help="text column of a file dataset (text pipeline)")
    p.add_argument("--feature-columns", help="comma-separated numeric feature columns (default: all numeric)")
    p.add_argument("--budget", type=_budgets, default=[0.1],
                   help="share of the stream to label (<= 1) or a number of labels; several, comma-separated")
    p.add_argument("--strategies", default="default",
                   help=f"comma-separated, of {', '.join(STRATEGIES)}; random always runs")
    p.add_argument("--seeds", type=int, default=3, help="seeds (stream orders and splits)")
    p.add_argument("--target", type=float, default=0.95, help="fraction of the all-labels accuracy to reach")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction kept out for evaluation")
    p.add_argument("--model", choices=["knn", "river-knn", "linear", "tree", "nb", "tfidf"],
                   help="shadow model (default: knn, or tfidf for text)")
    p.add_argument("--annotator-error", type=_rates, default=(0.0,), metavar="E[,E2,...]",
                   help="annotators' error rate: one for all, or one per annotator (0: every label is the truth)")
    p.add_argument("--overlap", type=int, default=1,
                   help="labels per bought item, from different annotators, combined by the live consensus "
                        "(0: adaptive); the budget counts labels")
    p.add_argument("--annotator-noise", choices=NOISES, default="uniform",
                   help="uniform: wrong at the same rate everywhere; boundary: more often near the class "
                        "boundary, the same mean rate")
    p.add_argument("--jobs", type=int, default=None, help="processes (default: one per core)")
    p.add_argument("--out", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write the learning curves as PNG")
    p.set_defaults(func=run, uses_settings=False)
    return p


def run(args, settings=None) -> int:
    """``feedbackloop simulate`` (no settings needed: no Kafka, no ClickHouse)."""
    if not 0.0 < args.holdout < 1.0:
        raise ValueError("--holdout must be in (0, 1)")
    features = args.feature_columns.split(",") if args.feature_columns else None
    annotation = Annotation(args.annotator_error, args.overlap, args.annotator_noise)
    data = [load(name, args.label_column, args.text_column, features) for name in args.dataset]
    if label_sets(data[0]) is not None:  # labels joined by "|": a multi-label replay, scored by micro-F1
        return simulate_sets.run(args, data[0])
    started = time.monotonic()
    result = simulate(data, args.budget, [s.strip() for s in args.strategies.split(",") if s.strip()],
                      seeds=args.seeds, target=args.target, holdout=args.holdout, model=args.model, jobs=args.jobs,
                      annotation=annotation)
    result["seconds"] = round(time.monotonic() - started, 1)
    print(table(result))
    print(f"{result['seconds']} s")
    if args.out:
        out = result["runs"][0] if len(result["runs"]) == 1 else result
        Path(args.out).write_text(json.dumps({**out, "seconds": result["seconds"]}, indent=1) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m feedbackloop.simulate [options]``, the same as ``feedbackloop simulate``."""
    parser = argparse.ArgumentParser(prog="feedbackloop")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

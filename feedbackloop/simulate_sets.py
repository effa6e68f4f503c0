"""``feedbackloop simulate`` on a multi-label dataset: sets of labels through the live loop.

A dataset is multi-label when its label column joins the chosen classes with
``|`` (:func:`feedbackloop.datasets.label_sets`); ``feedbackloop simulate``
(:func:`feedbackloop.simulate.run`) hands such a dataset to :func:`run`. The
protocol is :mod:`feedbackloop.protocol`'s, as for single labels, with sets:
the worker's own :class:`~streams.loop.Loop`, built ``multi_label``, replays the stream (a held-out share kept out, a seeded order, each item a
prediction event whose draw is fixed by its position and the seed); its
learner's one-vs-rest model (:mod:`streams.learning.one_vs_rest`) scores each
item in the production model's place, the set signals (mean per-class entropy,
:mod:`streams.selection.set_signals`) drive the policy, the bought items are
answered by the demo's simulated annotators (:class:`consumers.annotators.SimulatedAnnotator`:
wrong with probability ``--annotator-error``, and then one class flipped),
settled class by class (:mod:`streams.labels.set_consensus`) and learned.

The figure is **micro-F1** on the held-out items: every (item, class) decision
pooled, ``2 TP / (2 TP + FP + FN)``, a class predicted when its probability
passes 0.5 (:func:`~streams.learning.one_vs_rest.micro_f1`). Each strategy is
run at the budget on every seed against ``random`` (the control slice alone,
the same annotators, the same draws); ``labels_to_target`` is the labels bought
when micro-F1 first reaches ``target`` times that of the model learned from every
label of the stream (random sampling runs the whole stream, so what it needs is
never cut short; a strategy that misses the target counts what random needs).

>>> from feedbackloop.datasets import Dataset, label_sets
>>> rows = [({"x": (i % 10) / 10, "y": (i % 7) / 7}, "|".join(c for c, on in (("a", i % 10 > 4), ("b", i % 7 > 3))
...          if on)) for i in range(400)]
>>> out = simulate_sets(Dataset("toy", rows), budget=0.3, seeds=1, progress=False)
>>> sorted(out["strategies"]), out["metric"], out["strategies"]["default"]["final_micro_f1"][0] > 0.5
(['default', 'random'], 'micro_f1', True)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from consumers.annotators import SimulatedAnnotator, first_turn
from feedbackloop.datasets import Dataset, label_sets
from feedbackloop.protocol import STRATEGIES, budget_labels, checkpoints, first_reaching, split
from streams.labels.set_agreement import label_set
from streams.learning import one_vs_rest
from streams.loop import Loop

METRIC = "micro_f1"


def micro_f1(model, test, classes) -> float:
    """Held-out micro-F1 of ``model``'s predicted sets (classes over 0.5) on ``test``."""
    proba = one_vs_rest.proba_many(model, [x for x, _ in test], classes)
    return one_vs_rest.micro_f1((label_set(y), {c for c, p in q.items() if p > 0.5}) for q, (_, y) in zip(proba, test))


def team(truth: dict, errors: tuple[float, ...], overlap: int, seed: int) -> list[SimulatedAnnotator]:
    """``max(overlap, len(errors))`` annotators, the i-th wrong at ``errors[i % len(errors)]``."""
    return [SimulatedAnnotator(f"annotator-{i + 1}", truth.get, errors[i % len(errors)], seed + i)
            for i in range(max(overlap, len(errors)))]


def replay_sets(stream, test, strategy: str, budget: int, seed: int, kind: str = "linear",
                errors: tuple[float, ...] = (0.0,), overlap: int = 1, grid: list[int] | None = None) -> dict:
    """One strategy over one stream through a multi-label :class:`~streams.loop.Loop`: its
    micro-F1 curve at the label counts of ``grid`` (:func:`~feedbackloop.protocol.checkpoints`),
    labels spent, items bought, and the share of learned sets that differ from the truth."""
    classes = sorted(set().union(*(label_set(y) for _, y in stream)))
    blind = strategy == "random"  # uniform sampling needs no prediction
    loop = Loop.build(budget_fraction=min(1.0, budget / overlap / len(stream)), control_fraction=None, seed=seed,
                      overlap=overlap, model=one_vs_rest.make(kind), hold_out_control=False,
                      live_scoring=not blind, prequential=not blind, label_set=classes,
                      policy_options=STRATEGIES[strategy], multi_label=True)
    model = loop.trainer.learner.model
    truth = {str(t): y for t, (_, y) in enumerate(stream)}
    annotators = team(truth, errors, overlap, seed)
    grid = grid or checkpoints(budget)
    curve, spent, items, wrong, next_check = [], 0, 0, [], 0
    for t, (x, y) in enumerate(stream):
        if spent + overlap > budget:
            break
        now = t * 1000
        event = {"event_id": str(t), "item_id": str(t), "ts": now, "model_name": "", "model_version": "",
                 "predicted_label": None, "probabilities": {}, "features": x, "text": None, "context": {}}
        tasks = loop.route(loop.score("Prediction", event, now).candidates[0], now).tasks
        if not tasks:
            continue
        task, items = tasks[0], items + 1
        loop.take("LabelingTask", task, now)
        start = first_turn(task["item_id"], len(annotators))
        for annotator in (annotators[start:] + annotators[:start])[:overlap]:
            spent += 1
            settled = [r for table, r in loop.take("Label", annotator.label(task, now), now).rows
                       if table == "consensus_labels"]
            if settled:
                wrong.append(label_set(settled[0]["label"]) != label_set(y))
        while next_check < len(grid) and grid[next_check] <= spent:
            curve.append((spent, micro_f1(model, test, classes)))
            next_check += 1
    if not curve or curve[-1][0] != spent:
        curve.append((spent, micro_f1(model, test, classes)))
    return {"curve": curve, "labels_spent": spent, "items": items, "seen": len(stream),
            "label_error_rate": sum(wrong) / len(wrong) if wrong else None}


def reference(stream, test, kind: str = "linear") -> float:
    """Held-out micro-F1 of the one-vs-rest model learned from every label of the stream."""
    classes = sorted(set().union(*(label_set(y) for _, y in stream)))
    model = one_vs_rest.make(kind)
    for x, y in stream:
        one_vs_rest.learn(model, x, label_set(y), classes)
    return micro_f1(model, test, classes)


def _at(curve, labels: int) -> float:
    """The curve's micro-F1 at ``labels`` (its last point at or before it)."""
    return [f for n, f in curve if n <= labels][-1] if any(n <= labels for n, _ in curve) else curve[0][1]


def simulate_sets(dataset: Dataset, budget: float = 0.1, strategies: list[str] | None = None, seeds: int = 3,
                  target: float = 0.95, holdout: float = 0.2, kind: str = "linear",
                  errors: tuple[float, ...] = (0.0,), overlap: int = 1, progress: bool = True) -> dict:
    """Every strategy (and ``random``) on seeds ``0 .. seeds - 1``: per seed, micro-F1 at the budget
    and the labels to reach ``target`` times the all-labels micro-F1; the median and worst seed of
    the gap to random."""
    if label_sets(dataset) is None:
        raise ValueError(f"{dataset.name}: no label joins classes with '|': not a multi-label dataset")
    strategies = [s for s in (strategies or ["default"]) if s != "random"]
    per = {s: {"final_micro_f1": [], "labels_to_target": [], "labels_counted": [], "labels_spent": [],
               "label_error_rate": []} for s in [*strategies, "random"]}
    refs, n_stream, labels = [], 0, 0
    for seed in range(seeds):
        stream, test = split(dataset, holdout, seed)
        n_stream, labels = len(stream), budget_labels(budget, len(stream))
        ref = reference(stream, test, kind)
        refs.append(ref)
        whole = replay_sets(stream, test, "random", len(stream) // overlap * overlap, seed, kind, errors, overlap,
                            grid=sorted(set(checkpoints(labels)) | set(checkpoints(len(stream)))))
        need = first_reaching(whole["curve"], target * ref)
        runs = {"random": {**whole, "labels_spent": min(labels, whole["labels_spent"])}}
        for s in strategies:
            runs[s] = replay_sets(stream, test, s, labels, seed, kind, errors, overlap)
        for s, r in runs.items():
            hit = need if s == "random" else first_reaching(r["curve"], target * ref)
            counted = (need or whole["labels_spent"]) if s == "random" else \
                hit if hit is not None else max(r["labels_spent"], need or whole["labels_spent"])
            per[s]["final_micro_f1"].append(round(_at(r["curve"], labels), 4))
            per[s]["labels_to_target"].append(hit)
            per[s]["labels_counted"].append(counted)
            per[s]["labels_spent"].append(r["labels_spent"])
            per[s]["label_error_rate"].append(r["label_error_rate"])
        if progress:
            print(f"seed {seed}: " + ", ".join(f"{s} {per[s]['final_micro_f1'][-1]:.3f}" for s in per)
                  + f" (all labels {ref:.3f})", file=sys.stderr, flush=True)
    for s, r in per.items():
        gaps = [a - b for a, b in zip(r["final_micro_f1"], per["random"]["final_micro_f1"])]
        ratios = [a / b for a, b in zip(r["labels_counted"], per["random"]["labels_counted"])]
        r.update(median_micro_f1=statistics.median(r["final_micro_f1"]), worst_micro_f1=min(r["final_micro_f1"]),
                 median_gap_to_random=statistics.median(gaps), worst_gap_to_random=min(gaps),
                 median_ratio_to_random=statistics.median(ratios), worst_ratio_to_random=max(ratios))
    return {"dataset": dataset.name, "metric": METRIC, "budget": budget, "budget_labels": labels, "stream": n_stream,
            "classes": len(set().union(*label_sets(dataset))), "target": target,
            "all_labels_micro_f1": statistics.fmean(refs), "seeds": seeds, "model": kind,
            "annotator_error": list(errors), "overlap": overlap, "strategies": per}


def table(result: dict) -> str:
    """The result as text: one line a strategy, median and worst seed."""
    lines = [f"{result['dataset']} (multi-label, {result['classes']} classes): micro-F1 on held-out items at "
             f"{result['budget_labels']} labels of a stream of {result['stream']}, {result['seeds']} seeds; "
             f"all labels {result['all_labels_micro_f1']:.3f}",
             f"{'strategy':<12} {'micro-F1 median':>16} {'worst':>7} {'gap to random (median, worst)':>31} "
             f"{'labels to target / random (median, worst)':>43}"]
    for s, r in result["strategies"].items():
        lines.append(f"{s:<12} {r['median_micro_f1']:>16.3f} {r['worst_micro_f1']:>7.3f} "
                     f"{r['median_gap_to_random']:>+18.3f} {r['worst_gap_to_random']:>+12.3f} "
                     f"{r['median_ratio_to_random']:>30.2f} {r['worst_ratio_to_random']:>12.2f}")
    return "\n".join(lines)


def run(args, dataset: Dataset) -> int:
    """``feedbackloop simulate`` on a multi-label ``dataset`` (one budget; the first if several)."""
    kind = args.model if args.model in one_vs_rest.KINDS else "linear"
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    started = time.monotonic()
    result = simulate_sets(dataset, args.budget[0], strategies, seeds=args.seeds, target=args.target,
                           holdout=args.holdout, kind=kind, errors=tuple(args.annotator_error) or (0.0,),
                           overlap=max(1, args.overlap))
    result["seconds"] = round(time.monotonic() - started, 1)
    print(table(result))
    print(f"{result['seconds']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


"""The ``feedbackloop`` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading

from feedbackloop.settings import Settings

EPILOG = """\
Every setting also comes from the environment (KAFKA_BOOTSTRAP_SERVERS,
CLICKHOUSE_DSN, FEEDBACKLOOP_TOPIC_PREFIX, FEEDBACKLOOP_BUDGET_PER_HOUR, ...)
or from a KEY=value file named by FEEDBACKLOOP_CONFIG; see the README.

Start here:
  feedbackloop demo --events 5000 --report report.json   the whole loop, unattended
  feedbackloop stack up                                   a local Kafka + ClickHouse
  feedbackloop worker                                     the stream worker
  feedbackloop label                                      label tasks in the terminal
"""


def _settings(args) -> Settings:
    env = dict(os.environ)
    if getattr(args, "state_dir", None):
        env["FEEDBACKLOOP_STATE_DIR"] = args.state_dir
    return Settings.from_env(env)


def cmd_stack(args) -> int:
    from feedbackloop import stack

    s = _settings(args)
    local = stack.local_stack(s)
    if args.action == "up":
        s = stack.start(s)
        status = {**local.status(), "kafka": s.kafka_bootstrap_servers} if s.kafka_bootstrap_servers else local.status()
    elif args.action == "down":
        stack.stop(s, purge=args.purge)
        status = local.status()
    else:
        status = local.status()
        if s.kafka_bootstrap_servers:
            status.update(kafka=s.kafka_bootstrap_servers, external=True)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        state = "running" if status.get("running") else "stopped"
        print(f"kafka       {status['kafka']} ({state})\nclickhouse  {status['clickhouse_dsn']}")
    return 0


def cmd_worker(args) -> int:
    from feedbackloop import keys, stack, worker

    s = _settings(args)
    if not s.kafka_bootstrap_servers:
        local = stack.local_stack(s)
        if not local.status()["running"]:
            print("no Kafka: set KAFKA_BOOTSTRAP_SERVERS or run `feedbackloop stack up` first", file=sys.stderr)
            return 2
        s = keys.local(s.replace(kafka_bootstrap_servers=local.status()["kafka"]))
    keys.signing_key(s)  # no key, no worker: the error says how to set one
    worker.run(s, loglevel=args.loglevel, parent=args.parent)
    return 0


def cmd_demo(args) -> int:
    from feedbackloop import demo

    s = _settings(args).replace(budget_fraction=args.budget, publish_every=args.publish_every,
                                control_fraction=args.control, overlap=args.overlap, gold_rate=args.gold_rate)
    errors = [float(e) for e in args.annotator_errors.split(",")] if args.annotator_errors else None
    report = demo.run(s, dataset=args.dataset, label_column=args.label_column, events=args.events,
                      rate=args.rate, seed=args.seed, annotators=args.annotators,
                      annotator_error=args.annotator_error, override_rate=args.override_rate,
                      appeal_rate=args.appeal_rate, annotator_errors=errors, drift_at=args.drift_at, keep=args.keep,
                      serve=args.serve, labeling_port=args.labeling_port, dashboard_port=args.dashboard_port)
    print(demo.summary(report))
    demo.write_report(report, args.report)
    return 0


def cmd_label(args) -> int:
    from consumers.terminal import main as label_main

    return label_main(_settings(args), annotator=args.annotator, limit=args.limit)


def cmd_bench(args) -> int:
    from feedbackloop import bench

    result = bench.run(_settings(args), events=args.events, batch_size=args.batch_size, model_kind=args.model,
                       latency_rate=args.rate, latency_seconds=args.seconds)
    print(bench.summary(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="feedbackloop", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Turn a production model's mistakes and doubts into the few labels worth paying for.")
    p.add_argument("--state-dir", help="where the local stack keeps its data (default .feedbackloop)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    st = sub.add_parser("stack", help="start, stop or inspect the local Kafka + ClickHouse",
                        description="A real Kafka 2.3 broker and ZooKeeper on 127.0.0.1 (no Docker needed), "
                                    "data under the state directory; ClickHouse is embedded (chdb://). "
                                    "With KAFKA_BOOTSTRAP_SERVERS set, that cluster is used and nothing starts.")
    st.add_argument("action", choices=["up", "down", "status"])
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.add_argument("--purge", action="store_true", help="with down: delete the stack's data too")
    st.set_defaults(func=cmd_stack)

    w = sub.add_parser("worker", help="run the stream worker (scoring, routing, learning)",
                       description="Runs the Faust app against the configured Kafka and ClickHouse until "
                                   "SIGINT/SIGTERM. Scale out by running more workers: input topics split by "
                                   "partition.")
    w.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    w.add_argument("--parent", type=int, metavar="PID",
                   help="stop when process PID, which started this worker, ends (however it ends)")
    w.set_defaults(func=cmd_worker)

    d = sub.add_parser("demo", help="the whole loop on a local stack, with a real dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Brings up the local stack, starts a worker, replays a dataset as production "
                                   "traffic from a deliberately weak model, lets simulated annotators label the "
                                   "routed tasks, then prints what ClickHouse recorded.")
    d.add_argument("--dataset", default="bananas",
                   help="bananas, phishing, imagesegments, shuttle, or a CSV path (with --label-column)")
    d.add_argument("--label-column", help="label column of a CSV dataset")
    d.add_argument("--events", type=int, default=5000, help="predictions to replay")
    d.add_argument("--rate", type=float, default=250.0, help="predictions per second")
    d.add_argument("--budget", type=float, default=0.1, help="share of predictions to label")
    d.add_argument("--publish-every", type=int, default=25, help="labels between model versions")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--annotators", type=int, default=3, help="simulated annotators")
    d.add_argument("--annotator-error", type=float, default=0.05,
                   help="each annotator's error rate (with 5 or more: rising, the last one careless at 0.4)")
    d.add_argument("--annotator-errors", metavar="E1,E2,...", help="error rate of each annotator, explicitly")
    d.add_argument("--overlap", type=int, default=1,
                   help="labels per task from different annotators (0: adaptive); disagreements are adjudicated")
    d.add_argument("--gold-rate", type=float, default=0.0,
                   help="share of tasks followed by a known-answer gold check")
    d.add_argument("--control", type=float, default=0.2, help="share of the budget spent on the random control slice")
    d.add_argument("--override-rate", type=float, default=0.05, help="share of production errors users override")
    d.add_argument("--appeal-rate", type=float, default=0.02, help="share of the other errors users appeal")
    d.add_argument("--drift-at", type=int, metavar="N",
                   help="inject a concept drift at event N: every true label moves to the next class; "
                        "the summary shows the drift events the worker raised")
    d.add_argument("--report", metavar="PATH", help="write the report as JSON")
    d.add_argument("--keep", action="store_true", help="leave the local stack running afterwards")
    d.add_argument("--serve", action="store_true",
                   help="afterwards, keep serving the labeling UI and the dashboard until Ctrl-C")
    d.add_argument("--labeling-port", type=int, default=8000, help="port of the labeling UI with --serve")
    d.add_argument("--dashboard-port", type=int, default=8050, help="port of the dashboard with --serve")
    d.set_defaults(func=cmd_demo)

    lb = sub.add_parser("label", help="label tasks in the terminal",
                        description="Pulls the next task from labeling.tasks, shows the item, the suggested "
                                    "label, the model's confidence and why it was chosen, and sends your label.")
    lb.add_argument("--annotator", default=None, help="your annotator id (default: your user name)")
    lb.add_argument("--limit", type=int, default=0, help="stop after this many labels (0: no limit)")
    lb.set_defaults(func=cmd_label)

    b = sub.add_parser("bench", help="measure throughput and event-to-task latency on the local stack",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--events", type=int, default=100_000)
    b.add_argument("--batch-size", type=int, default=500, help="predictions per Kafka message")
    b.add_argument("--model", default="linear", choices=["knn", "linear", "tree"], help="shadow model kind")
    b.add_argument("--rate", type=float, default=1000.0, help="events/s while latency is measured")
    b.add_argument("--seconds", type=float, default=10.0, help="how long latency is measured")
    b.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    b.set_defaults(func=cmd_bench)

    from consumers.labeling import cli as labeling_cli
    from feedbackloop import agreement, dashboard, keys, simulate

    keys.add_parser(sub)
    simulate.add_parser(sub)
    agreement.add_parser(sub)
    dashboard.add_parser(sub)
    labeling_cli.add_parser(sub)
    return p


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM and a closed terminal (SIGHUP) stop a command the way Ctrl-C does,
    so its clean-up runs and stops what it started. Servers and the worker
    install their own handlers on top."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with _terminate_as_interrupt():
            return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError) as exc:
        print(f"feedbackloop: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

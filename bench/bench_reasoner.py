#!/usr/bin/env python3
"""Benchmark: the reasoner's throughput (queries/s) with 1, 2 and 4 clients, batched vs unbatched.

An in-process :class:`~vrs_node.core.reasoner_service.ReasonerService` (no ROS), ``tiny-random``
at ``--size`` px (128 by default; random weights: cost only, never quality), holding a window of
``--window`` DAVIS-2016 ``blackswan`` frames. Each client is a thread that sends one request at a
time in a closed loop (the next once the last is answered), one instruction each, over its OWN
stamp set, as trackers with their own windows do: client c names frames c .. c + ``--client-frames``
- 1 of the window. For each ``max_batch`` in ``--max-batches`` (4: batched, the node's default; 1:
unbatched, one request per prefill), each ``batch_wait_s`` in ``--batch-waits`` (0, the node's default,
by default) and each client count in ``--clients``, the clients run for
``--duration-s`` seconds after one warm-up request each (every frame's reasoner inputs, CLIP
embedding and MLLM frame tokens, are then cached, as in a running reasoner, so the figure is the
reasoning itself: anchor, lattice, the batched prefill, TDA). Each client count's configurations
run ``--rounds`` times, interleaved (order alternating), so that a change of the machine's load
hits them alike. Reported per configuration over its rounds: answered queries per second of wall
time and per second of this process's CPU time (``time.process_time``, all threads: the steadier
figure when other processes load the machine), the mean and largest batch (instructions per
``reason_many`` call) and the mean latency of a request.

Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import davis_sequence  # noqa: E402

from vrs_node.core.reasoner_protocol import Answer, Request, Response  # noqa: E402
from vrs_node.core.reasoner_service import ReasonerService, build_reasoner_grounder  # noqa: E402
from vrs_node.models.profiles import get_profile, load_models  # noqa: E402

INSTRUCTIONS = ["the black swan", "what is swimming on the dark water?", "the water",
                "the bird with the red beak that swims from left to right"]
STAMP0, STEP = 1_700_000_000_000_000_000, 33_333_333


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128, help="SAM-2 input size of the profile (px)")
    p.add_argument("--window", type=int, default=12, help="frames the reasoner holds")
    p.add_argument("--client-frames", type=int, default=8, help="frames each client names")
    p.add_argument("--clients", default="1,2,4", help="comma list of client counts")
    p.add_argument("--max-batches", default="4,1", help="comma list of max_batch values")
    p.add_argument("--batch-waits", default="0", help="comma list of batch_wait_s values (seconds)")
    p.add_argument("--duration-s", type=float, default=6.0, help="timed seconds per configuration and round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per configuration")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "reasoner.json")
    return p.parse_args(argv)


class Clients:
    """``count`` closed-loop clients of ``service``: client c asks about ``stamps[c : c + frames]``."""

    def __init__(self, service: ReasonerService, stamps: list[int], count: int, frames: int):
        self.service, self.count = service, count
        self.stamps = [stamps[c:c + frames] for c in range(count)]
        self.answered = threading.Condition()
        self.responses: dict[str, Response] = {}

    def on_response(self, text: str) -> None:
        response = Response.from_json(text)
        with self.answered:
            self.responses[response.client_id] = response
            self.answered.notify_all()

    def ask(self, c: int, request_id: int) -> Response:
        """Send client c's request and wait for its response."""
        client = f"client-{c}"
        with self.answered:
            self.responses.pop(client, None)
        self.service.submit(Request(client, request_id, [INSTRUCTIONS[c % len(INSTRUCTIONS)]],
                                    self.stamps[c]).to_json())
        with self.answered:
            if not self.answered.wait_for(lambda: client in self.responses, timeout=120):
                raise TimeoutError(f"{client} got no response")
            response = self.responses[client]
        if response.error is not None or not all(isinstance(r, Answer) for r in response.results):
            raise RuntimeError(f"{client}: {response}")
        return response

    def run(self, duration_s: float) -> tuple[int, float, list[float]]:
        """(requests answered, seconds, each request's latency) of the clients looping for ``duration_s``."""
        latencies: list[list[float]] = [[] for _ in range(self.count)]
        start = time.perf_counter()
        deadline = start + duration_s

        def loop(c: int) -> None:
            request_id = 1  # 0: the warm-up's
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                self.ask(c, request_id)
                latencies[c].append(time.perf_counter() - t0)
                request_id += 1

        threads = [threading.Thread(target=loop, args=(c,)) for c in range(self.count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        flat = [x for per_client in latencies for x in per_client]
        return len(flat), time.perf_counter() - start, flat


def measure(grounder, images, stamps, max_batch, batch_wait_s, clients, args) -> dict:
    """One configuration: a fresh service and its clients, warmed up, then timed."""
    holder: list[Clients] = []
    service = ReasonerService(grounder, args.window, max_batch, lambda text: holder[0].on_response(text), log=print,
                              batch_wait_s=batch_wait_s)
    for image, stamp in zip(images, stamps):
        service.add_frame(image, stamp, "cam")
    holder.append(Clients(service, stamps, clients, args.client_frames))
    service.start()
    try:
        for c in range(clients):  # warm-up: every frame's inputs cached, each text embedded
            holder[0].ask(c, 0)
        before, cpu = service.stats, time.process_time()
        answered, seconds, latencies = holder[0].run(args.duration_s)
        after, cpu = service.stats, time.process_time() - cpu
    finally:
        service.stop()
    return {"max_batch": max_batch, "batch_wait_s": batch_wait_s, "clients": clients, "answered": answered,
            "seconds": seconds, "cpu_s": cpu,
            "batches": after.batches - before.batches,
            "instructions": after.batch_instructions - before.batch_instructions,
            "largest_batch": after.largest_batch, "latency_sum_s": sum(latencies), "failures": after.failures}


def combine(runs: list[dict]) -> dict:
    """One configuration's figures over its rounds."""
    total = {k: sum(r[k] for r in runs) for k in ("answered", "seconds", "cpu_s", "batches", "instructions",
                                                   "latency_sum_s", "failures")}
    return {"max_batch": runs[0]["max_batch"], "batch_wait_s": runs[0]["batch_wait_s"], "clients": runs[0]["clients"],
            "rounds": runs, **total,
            "queries_per_s": total["answered"] / total["seconds"],
            "queries_per_cpu_s": total["answered"] / total["cpu_s"],
            "mean_batch": total["instructions"] / total["batches"],
            "largest_batch": max(r["largest_batch"] for r in runs),
            "mean_latency_s": total["latency_sum_s"] / total["answered"]}


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    models = load_models(get_profile("tiny-random"), image_size=args.size)
    grounder = build_reasoner_grounder(models)
    images = davis_sequence("blackswan", args.window)[0]
    stamps = [STAMP0 + i * STEP for i in range(len(images))]
    clients = [int(c) for c in args.clients.split(",")]
    settings = [(int(b), float(w)) for b in args.max_batches.split(",") for w in args.batch_waits.split(",")]
    if max(clients) + args.client_frames - 1 > len(images):
        raise SystemExit(f"{max(clients)} clients of {args.client_frames} frames need a window of "
                         f"{max(clients) + args.client_frames - 1} frames")
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_average": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    plan = [(count, r, setting) for count in clients for r in range(args.rounds)
            for setting in (settings if r % 2 == 0 else settings[::-1])]
    runs: dict[tuple[int, tuple[int, float]], list[dict]] = {}
    for count, _, (max_batch, wait) in tqdm(plan, desc="runs"):
        runs.setdefault((count, (max_batch, wait)), []).append(
            measure(grounder, images, stamps, max_batch, wait, count, args))
    for (count, (max_batch, wait)), rounds in runs.items():
        row = combine(rounds)
        report["rows"].append(row)
        print(f"max_batch={max_batch} batch_wait_s={wait:g} clients={count}: {row['queries_per_s']:.2f} queries/s "
              f"({row['queries_per_cpu_s']:.2f} per CPU s), mean batch {row['mean_batch']:.2f}, "
              f"mean latency {row['mean_latency_s'] * 1e3:.0f} ms")
    report["load_average_after"] = os.getloadavg()
    heads = [f"max_batch={b}, batch_wait_s={w:g}: q/s, q/CPU s, mean batch, latency" for b, w in settings]
    print(f"\n| clients | {' | '.join(heads)} |")
    print(f"|---|{'---|' * len(settings)}")
    for count in clients:
        cells = [next(r for r in report["rows"] if r["clients"] == count and (r["max_batch"], r["batch_wait_s"]) == s)
                 for s in settings]
        print(f"| {count} | " + " | ".join("%.1f, %.1f, %.2f, %.0f ms" % (
            r["queries_per_s"], r["queries_per_cpu_s"], r["mean_batch"], r["mean_latency_s"] * 1e3)
            for r in cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

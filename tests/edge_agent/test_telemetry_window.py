"""Per-window telemetry: exact counts, mergeable latency, drift bins, windows that tile time,
no loss under concurrency, bounded memory under overload, and what leaves the device."""

from __future__ import annotations

import itertools
import re
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from converter.reference import compute_reference
from edge_agent.bundle.reference import ReferenceStats, bin_counts
from edge_agent.protocol import BinnedCounts, BundleRef, Telemetry, decode, encode, topics
from edge_agent.protocol.histogram import LATENCY_BOUNDS_MS, bucket_index, merge_counts, quantile
from edge_agent.telemetry import WindowAggregator, WindowSnapshot, prometheus_lines

REF = BundleRef(model="digits", version="1.2.0", profile="x86-64", sha256="3f" * 32)
SHADOW = BundleRef(model="digits", version="1.3.0", profile="x86-64", sha256="77" * 32)
T0 = 1_795_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Make = Callable[..., WindowAggregator]


@pytest.fixture
def make() -> Iterator[Make]:
    made: list[WindowAggregator] = []

    def factory(**kwargs: Any) -> WindowAggregator:
        agg = WindowAggregator(**kwargs)
        made.append(agg)
        return agg

    yield factory
    for agg in made:
        agg.close()


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return probabilities


@pytest.fixture(scope="module")
def reference() -> ReferenceStats:
    """What the converter writes for a model with a tabular and an image input, a
    classifier output and an int8 one, computed from data."""
    rng = np.random.default_rng(0)
    n = 200
    return compute_reference(
        {
            "table": rng.normal(size=(n, 6)).astype(np.float32),
            "image": rng.random((n, 1, 4, 4), dtype=np.float32),
        },
        {
            "probabilities": softmax(rng.normal(size=(n, 5)) * 2).astype(np.float32),
            "codes": rng.integers(-100, 100, size=(n, 3)).astype(np.int8),
        },
    )


def expected(values: np.ndarray, edges: list[float]) -> BinnedCounts:
    counts, below, above, nan = bin_counts(values, edges)
    return BinnedCounts(counts=counts, below=below, above=above, nan=nan)


def test_counts_and_latency_buckets_are_exact(make: Make) -> None:
    clock = Clock()
    agg = make(clock=clock)
    agg.set_model(REF, None)
    served = [0.000001, 0.00005, 0.0004, 0.0004, 0.002, LATENCY_BOUNDS_MS[30] / 1000, 150.0]
    for latency in served:
        agg.record(latency, {}, {})
    agg.record_error("invalid_input", 0.00002)
    agg.record_error("model_error", 0.03)
    agg.record_error("model_error", 0.04)
    agg.record_error("no_model")  # refused before any model ran: no latency
    clock.now += 10
    window = agg.rotate()

    assert window.requests == len(served) + 4
    assert window.errors == {"invalid_input": 1, "model_error": 2, "no_model": 1}
    timed = [*served, 0.00002, 0.03, 0.04]
    want = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for latency in timed:
        want[bucket_index(latency * 1000)] += 1
    assert list(window.latency) == want
    assert window.latency[0] == 1
    assert window.latency[-1] == 1
    assert window.latency_sum_s == pytest.approx(sum(timed))
    assert (window.start, window.end, window.bundle) == (T0, T0 + 10, REF)
    assert (window.inputs, window.outputs, window.shadow) == ({}, {}, None)


@pytest.mark.parametrize("kind", ["", "Model_Error", "model error", 'x"}'])
def test_an_error_kind_must_be_a_plain_label(make: Make, kind: str) -> None:
    with pytest.raises(ValueError, match="error kind"):
        make().record_error(kind)


def test_a_percentile_over_two_merged_windows_equals_one_window_over_both(make: Make) -> None:
    latencies = np.random.default_rng(1).lognormal(mean=-7.5, sigma=0.8, size=5000)
    split, whole = make(), make()
    for i, latency in enumerate(latencies):
        split.record(float(latency), {}, {})
        whole.record(float(latency), {}, {})
        if i == 1999:
            first = split.rotate()
    second = split.rotate()
    both = whole.rotate()

    merged = merge_counts([first.latency, second.latency])
    assert merged == list(both.latency)
    assert first.requests + second.requests == both.requests == len(latencies)
    for q in (0.5, 0.9, 0.99):
        assert quantile(merged, q) == quantile(both.latency, q)
        # and the estimate is within one bucket (a factor 10**0.1) of the true percentile
        true_ms = float(np.quantile(latencies, q)) * 1000
        estimate = quantile(merged, q)
        assert estimate is not None
        assert 10**-0.1 <= estimate / true_ms <= 10**0.1


def test_binned_counts_equal_bin_counts_over_the_same_arrays(
    make: Make, reference: ReferenceStats
) -> None:
    rng = np.random.default_rng(2)
    ref_in, ref_out = reference.inputs, reference.outputs
    samples = []
    for batch in (1, 3, 7, 1, 12):
        table = rng.normal(size=(batch, 6)).astype(np.float32) * 1.5
        image = rng.random((batch, 1, 4, 4), dtype=np.float32).astype(np.float16)
        probabilities = softmax(rng.normal(size=(batch, 5)) * 2).astype(np.float16)
        codes = rng.integers(-128, 127, size=(batch, 3)).astype(np.int8)
        samples.append((table, image, probabilities, codes))
    # values on edges (bins are [a, b), the last one [a, b]), out of range, and NaN
    table, image, probabilities, _ = samples[2]
    table[0, :3] = [ref_in["table"].values.edges[0], ref_in["table"].values.edges[4], np.inf]
    features = ref_in["table"].features
    assert features is not None
    table[1, 2] = features[2].edges[-1]
    table[2, 0] = np.nan
    image[0, 0, 0, 0] = np.nan
    probabilities[3, 1] = np.nan

    agg = make()
    agg.set_model(REF, reference)
    for table, image, probabilities, codes in samples:
        agg.record(
            0.001,
            {"table": table, "image": image, "mask": np.ones(3)},  # "mask": no reference
            {"probabilities": probabilities, "codes": codes, "label": np.array(["cat"])},
        )
    window = agg.rotate()

    table, image, probabilities, codes = (np.concatenate(t) for t in zip(*samples, strict=True))
    assert len(features) == 6
    want_inputs = {
        "table": expected(table, ref_in["table"].values.edges),
        **{f"table:f{i}": expected(table[:, i], h.edges) for i, h in enumerate(features)},
        "image": expected(image, ref_in["image"].values.edges),  # channels: values only
    }
    classes, confidence = ref_out["probabilities"].classes, ref_out["probabilities"].confidence
    assert classes is not None
    assert confidence is not None
    predicted = probabilities.argmax(axis=-1).astype(np.float64)
    predicted[np.isnan(probabilities).any(axis=-1)] = np.nan
    class_edges = [c - 0.5 for c in range(len(classes) + 1)]
    codes_features = ref_out["codes"].features
    assert codes_features is not None
    want_outputs = {
        "probabilities": expected(probabilities, ref_out["probabilities"].values.edges),
        "probabilities:class": expected(predicted, class_edges),
        "probabilities:confidence": expected(probabilities.max(axis=-1), confidence.edges),
        "codes": expected(codes, ref_out["codes"].values.edges),
        **{f"codes:f{i}": expected(codes[:, i], h.edges) for i, h in enumerate(codes_features)},
    }
    assert window.inputs == want_inputs
    assert window.outputs == want_outputs
    assert (window.binned, window.skipped) == (len(samples), 0)
    # the edge cases did land where bin_counts puts them
    assert want_inputs["table"].nan == 1
    assert want_inputs["table"].above >= 1
    assert want_outputs["probabilities:class"].nan == 1
    assert want_outputs["probabilities:confidence"].nan == 1


def total(b: BinnedCounts) -> int:
    return sum(b.counts) + b.below + b.above + b.nan


def test_a_tensor_that_does_not_fit_the_reference_gets_only_its_value_bins(
    make: Make, reference: ReferenceStats
) -> None:
    agg = make()
    agg.set_model(REF, reference)
    wide = np.zeros((2, 9), dtype=np.float32)  # 9 columns where the reference has 6 features
    agg.record(0.001, {"table": wide}, {"probabilities": np.float32(0.5)})  # a scalar
    window = agg.rotate()
    assert window.inputs["table"] == expected(wide, reference.inputs["table"].values.edges)
    assert [total(window.inputs[f"table:f{i}"]) for i in range(6)] == [0] * 6
    assert total(window.outputs["probabilities"]) == 1
    assert total(window.outputs["probabilities:class"]) == 0
    assert total(window.outputs["probabilities:confidence"]) == 0


def test_rotate_tiles_time_and_empty_windows_still_report(make: Make) -> None:
    clock = Clock()
    agg = make(clock=clock)
    windows: list[WindowSnapshot] = []
    for step in (10.0, 10.0, 9.5, -3.0, 10.0):  # a clock stepped back gives an empty span
        clock.now += step
        windows.append(agg.rotate())
    assert windows[0].start == T0
    for before, after in itertools.pairwise(windows):
        assert before.end == after.start
    assert all(w.end >= w.start for w in windows)
    assert windows[3].end == windows[3].start
    messages = [w.message(device_id="press-07", seq=100 + i) for i, w in enumerate(windows)]
    assert [m.seq for m in messages] == [100, 101, 102, 103, 104]
    assert all(m.requests == 0 and sum(m.latency.counts) == 0 for m in messages)
    assert messages[0].window_end == messages[1].window_start


def test_eight_threads_recording_while_windows_rotate_lose_nothing(
    make: Make, reference: ReferenceStats
) -> None:
    agg = make(max_queued=100_000)
    agg.set_model(REF, reference)
    inputs = {"table": np.zeros((1, 6), dtype=np.float32)}
    outputs = {"probabilities": np.full((1, 5), 0.2, dtype=np.float32)}
    threads, per_thread = 8, 10_000
    windows: list[WindowSnapshot] = []
    done = threading.Event()

    def serve() -> None:
        for _ in range(per_thread):
            agg.record(0.0005, inputs, outputs)

    def rotate() -> None:
        while not done.is_set():
            windows.append(agg.rotate())
            done.wait(0.005)

    rotator = threading.Thread(target=rotate)
    rotator.start()
    servers = [threading.Thread(target=serve) for _ in range(threads)]
    for t in servers:
        t.start()
    for t in servers:
        t.join()
    done.set()
    rotator.join()
    windows.append(agg.rotate())

    n = threads * per_thread
    assert sum(w.requests for w in windows) == n
    assert sum(w.latency[bucket_index(0.5)] for w in windows) == n
    assert sum(w.binned for w in windows) == n
    assert sum(w.skipped for w in windows) == 0
    binned = [w for w in windows if w.binned]
    assert sum(total(w.inputs["table"]) for w in binned) == 6 * n
    assert sum(total(w.outputs["probabilities:class"]) for w in binned) == n
    assert agg.totals().requests == n
    assert len(windows) > 2  # the windows did rotate under load


def test_overload_skips_binning_but_keeps_requests_exact(
    make: Make, reference: ReferenceStats
) -> None:
    agg = make(max_queued=4)
    agg.close()  # no worker: samples wait for rotate, so exactly max_queued are kept
    agg.set_model(REF, reference)
    for _ in range(10):
        agg.record(0.001, {"table": np.zeros((1, 6), dtype=np.float32)}, {})
    window = agg.rotate()
    assert (window.requests, sum(window.latency)) == (10, 10)
    assert (window.binned, window.skipped) == (4, 6)
    assert window.message(device_id="d1", seq=0).requests == 10
    assert total(window.inputs["table:f0"]) == 4
    assert agg.totals().skipped == 6


def test_above_the_drift_rate_an_even_sample_is_binned_and_the_rest_counted(
    make: Make, reference: ReferenceStats
) -> None:
    clock = Clock()
    agg = make(clock=clock, max_binned_per_s=10)
    agg.close()  # no worker: requests are taken off at totals and rotate only
    agg.set_model(REF, reference)

    def serve(n: int) -> None:
        for _ in range(n):
            agg.record(0.001, {"table": np.zeros((1, 6), dtype=np.float32)}, {})

    serve(50)  # the first second: no rate known yet, every request binned
    clock.now += 1
    agg.totals()  # 50 a second: from now on every 5th
    serve(100)
    clock.now += 1
    window = agg.rotate()  # 100 a second: from now on every 10th
    assert (window.requests, window.binned, window.sampled_out, window.skipped) == (150, 70, 80, 0)
    assert total(window.inputs["table:f0"]) == 70
    assert window.message(device_id="d1", seq=0).binned == 70

    serve(5)  # every 10th of requests 151..155: none, and the rate falls to 5 a second
    clock.now += 1
    assert (agg.rotate().binned, agg.totals().sampled_out) == (0, 85)
    serve(5)  # under the limit again: every request
    clock.now += 1
    window = agg.rotate()
    assert (window.binned, window.sampled_out) == (5, 0)
    assert "edgefleet_drift_sampled_out_total 85" in prometheus_lines(agg.totals())


def test_the_drift_rate_must_be_positive(make: Make) -> None:
    with pytest.raises(ValueError, match="max_binned_per_s must be above 0"):
        make(max_binned_per_s=0)


def test_memory_stays_bounded_while_the_worker_cannot_keep_up(
    make: Make, reference: ReferenceStats
) -> None:
    agg = make(max_queued=4)
    agg.set_model(REF, reference)
    big = np.random.default_rng(3).random((1, 1, 500, 400), dtype=np.float32)  # 800 kB
    tracemalloc.start()
    try:
        for _ in range(300):  # 240 MB if every sample were kept
            agg.record(0.001, {"image": big.copy()}, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    window = agg.rotate()
    assert (window.requests, window.binned + window.skipped) == (300, 300)
    assert peak < 24 * big.nbytes


def test_set_model_without_rotate_skips_the_old_models_samples(
    make: Make, reference: ReferenceStats
) -> None:
    agg = make()
    agg.close()
    agg.set_model(REF, reference)
    agg.record(0.001, {"table": np.zeros((1, 6), dtype=np.float32)}, {})
    agg.set_model(SHADOW, None)
    window = agg.rotate()
    assert (window.bundle, window.requests, window.binned, window.skipped) == (SHADOW, 1, 0, 1)
    assert window.inputs == {}


def test_shadow_agreement_is_counted_per_window(make: Make) -> None:
    agg = make()
    assert agg.rotate().shadow is None  # no shadow ran
    for agreed in (True, True, False):
        agg.record_shadow(SHADOW, agreed, 0.002)
    first = agg.rotate()
    assert first.shadow is not None
    assert (first.shadow.bundle, first.shadow.compared, first.shadow.agreed) == (SHADOW, 3, 2)
    agg.record_shadow(SHADOW, False, 0.002)
    agg.record_shadow(REF, True, 0.002)  # another candidate: the window reports the newest
    second = agg.rotate()
    assert second.shadow is not None
    assert (second.shadow.bundle, second.shadow.compared, second.shadow.agreed) == (REF, 1, 1)
    totals = agg.totals()
    assert (totals.shadow_compared, totals.shadow_agreed) == (5, 3)
    assert totals.shadow_latency[bucket_index(2.0)] == 5


def test_the_message_validates_and_round_trips_through_the_codec(
    make: Make, reference: ReferenceStats
) -> None:
    clock = Clock()
    agg = make(clock=clock)
    agg.set_model(REF, reference)
    rng = np.random.default_rng(4)
    for _ in range(50):
        agg.record(
            float(rng.uniform(0.0002, 0.002)),
            {"table": rng.normal(size=(2, 6)).astype(np.float32)},
            {"probabilities": softmax(rng.normal(size=(2, 5))).astype(np.float32)},
        )
    agg.record_error("nan_output", 0.001)
    agg.record_shadow(SHADOW, True, 0.001)
    clock.now += 10
    message = agg.rotate().message(device_id="press-07", seq=4182, dropped=2)
    payload = encode(message)
    assert decode(topics.telemetry("press-07"), payload) == message
    assert isinstance(message, Telemetry)
    assert (message.requests, message.errors, message.dropped) == (51, {"nan_output": 1}, 2)
    assert message.window_end.timestamp() - message.window_start.timestamp() == 10
    assert set(message.inputs) == {"table", *(f"table:f{i}" for i in range(6)), "image"}
    assert set(message.outputs) == {
        "probabilities",
        "probabilities:class",
        "probabilities:confidence",
        "codes",
        *(f"codes:f{i}" for i in range(3)),
    }


SAMPLE = re.compile(r'^([a-z_]+)(?:\{([a-z]+)="([^"]*)"\})? (\S+)$')


def parse_prometheus(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """A strict reading of the text format: HELP/TYPE comments and `name{label="v"} value`."""
    types: dict[str, str] = {}
    samples = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line.startswith("# HELP "):
            continue
        else:
            match = SAMPLE.match(line)
            assert match, line
            name, label, value, number = match.groups()
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert family in types or name in types, f"{name} has no TYPE"
            samples.append((name, {label: value} if label else {}, float(number)))
    return types, samples


def test_prometheus_text_parses_and_its_buckets_are_cumulative(make: Make) -> None:
    agg = make()
    latencies = [0.000005, 0.0003, 0.0003, 0.0011, 0.05, 200.0]
    for latency in latencies:
        agg.record(latency, {}, {})
    agg.rotate()  # totals span closed windows and the open one
    agg.record_error("invalid_input", 0.00001)
    agg.record_error("no_model")
    agg.record_shadow(SHADOW, True, 0.0004)
    agg.record_shadow(SHADOW, False, 0.0004)

    types, samples = parse_prometheus(prometheus_lines(agg.totals()))
    assert types["edgefleet_requests_total"] == "counter"
    assert types["edgefleet_latency_seconds"] == "histogram"
    value = {(n, tuple(labels.items())): v for n, labels, v in samples}
    assert value[("edgefleet_requests_total", ())] == 8
    assert value[("edgefleet_errors_total", (("kind", "invalid_input"),))] == 1
    assert value[("edgefleet_errors_total", (("kind", "no_model"),))] == 1
    assert value[("edgefleet_shadow_compared_total", ())] == 2
    assert value[("edgefleet_shadow_agreed_total", ())] == 1

    buckets = [
        (labels["le"], v) for n, labels, v in samples if n == "edgefleet_latency_seconds_bucket"
    ]
    bounds = [float(le) for le, _ in buckets]
    counts = [v for _, v in buckets]
    assert bounds[:-1] == pytest.approx([b / 1000 for b in LATENCY_BOUNDS_MS], rel=1e-12)
    assert bounds[-1] == float("inf")
    assert counts == sorted(counts)  # cumulative
    timed = [*latencies, 0.00001]
    for bound, count in zip(bounds, counts, strict=True):
        assert count == sum(1 for t in timed if t <= bound)
    assert counts[-1] == value[("edgefleet_latency_seconds_count", ())] == len(timed)
    assert value[("edgefleet_latency_seconds_sum", ())] == pytest.approx(sum(timed))

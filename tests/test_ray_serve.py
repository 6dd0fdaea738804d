"""Engine replicas on Ray Serve (swift_integrations.serve.ray_serve) sharing one profile store, on a local Ray cluster.

The module starts one local Ray cluster (2 CPUs) and deploys 2 replicas of the embedded model
behind Ray Serve's HTTP proxy, once. Replies are short and replicas run one torch thread each, so
the module stays within a few minutes on two cores. Outputs are compared with one in-process
engine with the same kernels and thread count (greedy: identical token for token).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from ray import serve  # noqa: E402

from swift_engine import SwiftConfig, SwiftEngine  # noqa: E402
from swift_engine.store.profile_store import ProfileStore, ProfileStoreUnavailable  # noqa: E402
from swift_engine.store.records import ProfileRecord  # noqa: E402
from swift_integrations.serve.ray_serve import APP_NAME, ReplicaSettings, build_app  # noqa: E402
from swift_integrations.serve.ray_store import RayProfileStore, store_actor  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "ray-test-key"
#: kernels fixed (not measured) and one thread, in the replicas and the reference alike: same rounding
CONFIG = {"cpu_kernels": "torch"}
#: the default precision, as replicas run it: the embedded Q4_1 file at int4 (PyTorch's int4 kernels, fixed above)
DTYPE = "auto"
QUESTIONS = [
    "Name a fruit.",
    "What is 2 plus 2?",
    "Say hello in French.",
    "Name a colour.",
    "What is the capital of Italy?",
    "Name an animal.",
    "Count to three.",
    "What day comes after Monday?",
]
STEPS = ["answer", "summarize", "plan", "tool"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The local cluster; yields the machine measurement folder its processes use (they inherit this
    environment): a fresh one, as a new machine's (test_replicas_share_profiles_through_the_actor_store)."""
    machine = tmp_path_factory.mktemp("ray-machine-measurements")
    shared = os.environ.get("SWIFT_MEASUREMENT_DIR")
    os.environ["SWIFT_MEASUREMENT_DIR"] = str(machine)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="swift-tests")
    finally:  # this process keeps the suite's
        if shared is None:
            os.environ.pop("SWIFT_MEASUREMENT_DIR", None)
        else:
            os.environ["SWIFT_MEASUREMENT_DIR"] = shared
    try:
        yield machine
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def reference() -> Iterator[SwiftEngine]:
    """One engine in this process, as the replicas are configured (fixed kernels, one thread)."""
    import torch

    engine = SwiftEngine.from_pretrained(None, device="cpu", dtype=DTYPE, config=SwiftConfig(**CONFIG))
    yield engine
    engine.close()
    del torch


_EXPECTED: dict[tuple[int, str, int], str] = {}


def _expected(engine: SwiftEngine, question: str, max_tokens: int) -> str:
    """The reference engine's greedy reply (computed once per question and length: the tests ask again)."""
    key = (id(engine), question, max_tokens)
    if key not in _EXPECTED:
        _EXPECTED[key] = _generate_one_thread(engine, question, max_tokens)
    return _EXPECTED[key]


def _generate_one_thread(engine: SwiftEngine, question: str, max_tokens: int) -> str:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return engine.generate([{"role": "user", "content": question}], max_new_tokens=max_tokens).text
    finally:
        torch.set_num_threads(threads)


def _settings(**changes: Any) -> ReplicaSettings:
    """2 one-thread replicas of the embedded model, configured like the reference engine."""
    base: dict[str, Any] = dict(
        device="cpu", dtype=DTYPE, api_key=KEY, replicas=2, replica_cpus=1, threads=1, config=CONFIG, model_name="swift"
    )
    return ReplicaSettings(**{**base, **changes})


def _deploy(settings: ReplicaSettings, port: int) -> str:
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared-profiles")


@pytest.fixture(scope="module")
def base(cluster, store_dir) -> str:
    """2 replicas sharing one profile directory, behind Ray Serve's proxy. Each takes at most 8 requests at
    once (``max_ongoing_requests``), so 16 concurrent ones reach both: with 16 each, one replica that batches
    its calls could answer all 16 before the router sent any to the other."""
    settings = _settings(max_queue=8, request_timeout=600, profile_dir=str(store_dir))
    return _deploy(settings, _free_port())


def _ask(url: str, question: str, step: str, max_tokens: int, timeout: float = 300) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={
            "model": "swift",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "metadata": {"swift_step": step},
        },
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=timeout,
    )


def _replicas() -> list[Any]:
    """Handles of the app's running replica actors."""
    names = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#")
    ]
    return [ray.get_actor(a["name"], namespace=a["namespace"]) for a in names]


def _wait_running(replicas: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app = serve.status().applications.get(APP_NAME)
        if app is not None and app.status == "RUNNING":
            counts = app.deployments["SwiftReplica"].replica_states
            if counts.get("RUNNING", 0) >= replicas and sum(counts.values()) == counts.get("RUNNING", 0):
                return
        time.sleep(1)
    raise AssertionError(f"the application did not get back to {replicas} running replicas: {serve.status()}")


def _assert_profiles_valid(records: list[ProfileRecord], calls_per_step: Counter[str]) -> None:
    by_step = {r.step_key: r for r in records}
    for step, calls in calls_per_step.items():
        assert step in by_step, f"no profile for step {step!r}: {sorted(by_step)}"
        # every finished call was merged into the one record: no replica's write was lost
        assert by_step[step].calls >= calls, (step, by_step[step].calls, calls)


# -- 2 replicas, one shared directory ---------------------------------------------------------------


def test_16_concurrent_requests_over_steps_match_single_engine(base, reference, store_dir):
    jobs = [(QUESTIONS[i % len(QUESTIONS)], STEPS[i % len(STEPS)]) for i in range(16)]
    expected = {q: _expected(reference, q, 12) for q in QUESTIONS}
    with cf.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda job: _ask(base, job[0], job[1], 12), jobs))
    assert [r.status_code for r in responses] == [200] * 16, [r.text for r in responses if r.status_code != 200]
    for (question, step), resp in zip(jobs, responses):
        body = resp.json()
        assert body["choices"][0]["message"]["content"] == expected[question], question
        assert body["swift"]["step_key"] == step
    assert len({r.headers["x-swift-replica"] for r in responses}) == 2, "both replicas served"
    # both replicas wrote into one store: one record per step, every call counted, no file set aside
    store = ProfileStore(store_dir)
    _assert_profiles_valid(store.list(), Counter(step for _, step in jobs))
    assert not [p for p in store_dir.rglob("*") if ".corrupt-" in p.name]


def test_a_step_profile_learned_on_one_replica_is_read_by_the_other(base, store_dir):
    """The shared record grows with the calls of both replicas (each checks it out at call start)."""
    before = {r.step_key: r.calls for r in ProfileStore(store_dir).list()}
    replicas = set()
    for i in range(6):
        resp = _ask(base, QUESTIONS[i], "answer", 6)
        assert resp.status_code == 200, resp.text
        replicas.add(resp.headers["x-swift-replica"])
    after = {r.step_key: r.calls for r in ProfileStore(store_dir).list()}
    assert after["answer"] == before.get("answer", 0) + 6


def test_killing_a_replica_under_load_fails_clearly_and_recovers(base, reference, store_dir):
    """Requests in the killed replica fail with a 5xx (Ray Serve's proxy answers 500), which the
    OpenAI SDK and ChatOpenAI retry by default (max_retries=2): their callers see every answer."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, timeout=240)  # its default retries

    def with_sdk(i: int) -> str | None:
        resp = client.chat.completions.create(
            model="swift",
            messages=[{"role": "user", "content": QUESTIONS[i]}],
            max_tokens=64,  # at int4 shorter replies could all be done before the kill
            temperature=0,
            metadata={"swift_step": STEPS[i % 2]},
        )
        return resp.choices[0].message.content

    expected = {q: _expected(reference, q, 64) for q in QUESTIONS[:8]}
    started = time.monotonic()
    with cf.ThreadPoolExecutor(8) as pool:
        raw = [pool.submit(_ask, base, QUESTIONS[i], STEPS[i % 2], 64, 240) for i in range(4)]
        sdk = [pool.submit(with_sdk, i) for i in range(4, 8)]
        time.sleep(4)  # requests are in both replicas now
        victim = _replicas()[0]
        ray.kill(victim, no_restart=True)
        statuses = []
        for i, fut in enumerate(raw):
            resp = fut.result()  # raises if the client timed out: a hung request fails the test
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                assert resp.json()["choices"][0]["message"]["content"] == expected[QUESTIONS[i]]
            else:
                assert resp.status_code in (500, 502, 503), resp.text
                assert resp.text.strip() and "Traceback" not in resp.text
        for i, fut in zip(range(4, 8), sdk):
            assert fut.result() == expected[QUESTIONS[i]]  # retried where the replica died under it
    assert time.monotonic() - started < 240
    # Ray Serve replaces the dead replica; the service answers again, identically
    _wait_running(2)
    with cf.ThreadPoolExecutor(4) as pool:
        after = list(pool.map(lambda i: _ask(base, QUESTIONS[i], "answer", 12), range(4)))
    assert [r.status_code for r in after] == [200] * 4
    for i, resp in enumerate(after):
        assert resp.json()["choices"][0]["message"]["content"] == _expected(reference, QUESTIONS[i], 12)
    # what either replica wrote, before and after the kill, is there and valid
    store = ProfileStore(store_dir)
    records = store.list()
    assert {"answer", "summarize"} <= {r.step_key for r in records}
    assert not [p for p in store_dir.rglob("*") if ".corrupt-" in p.name]
    assert not [p for p in store_dir.rglob("*.tmp")]


# -- no shared disk: the records in a Ray actor -------------------------------------------------------


def _record(fp: str, step: str, calls: int = 0) -> ProfileRecord:
    return ProfileRecord(model_fingerprint=fp, model_name="m", step_key=step, calls=calls)


def test_actor_store_merges_concurrent_updates_from_processes(cluster, tmp_path):
    actor = store_actor("store-merge-test", str(tmp_path / "actor"), on_head_node=True)
    fp = "ab" * 8

    def bump(current: ProfileRecord | None) -> ProfileRecord:
        base = current or _record(fp, "tool")
        return base.model_copy(update={"calls": base.calls + 1})

    @ray.remote(num_cpus=0)
    def bump_many(handle: Any, n: int) -> None:
        store = RayProfileStore(handle, directory=os.environ.get("SWIFT_PROFILE_DIR"))
        for _ in range(n):
            store.update(fp, "tool", bump)

    local = RayProfileStore(actor, directory=tmp_path / "local")
    remote = [bump_many.remote(actor, 10) for _ in range(2)]
    with cf.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: [local.update(fp, "tool", bump) for _ in range(10)], range(2)))
    ray.get(remote, timeout=120)
    assert local.get(fp, "tool").calls == 40  # 2 processes x 10 + 2 threads x 10, none lost
    # the records are files on the actor's disk, with the store's rules (and survive a restart)
    assert (tmp_path / "actor" / fp).is_dir()
    ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            assert local.get(fp, "tool").calls == 40
            break
        except ProfileStoreUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert [r.step_key for r in local.list(fp)] == ["tool"]
    assert local.reset(fp) == 1 and local.get(fp, "tool") is None
    ray.kill(actor, no_restart=True)


def test_an_unreachable_actor_store_never_fails_generation(cluster, reference, tmp_path):
    actor = store_actor("store-dead-test", str(tmp_path / "actor"))
    store = RayProfileStore(actor, directory=tmp_path / "local", timeout=5)
    ray.kill(actor, no_restart=True)
    with pytest.raises(ProfileStoreUnavailable):
        store.get("ab" * 8, "x")
    engine = SwiftEngine(reference.model, reference.tokenizer, SwiftConfig(**CONFIG), profile_store=store)
    result = engine.generate([{"role": "user", "content": QUESTIONS[0]}], max_new_tokens=6, step_key="x")
    assert result.text == _expected(reference, QUESTIONS[0], 6)


def test_replicas_share_profiles_through_the_actor_store(cluster, base, reference, tmp_path):
    """Redeploys the app with store='actor' (after the directory tests): 2 replicas, one actor."""
    settings = _settings(store="actor", store_actor="store-serve-test", profile_dir=str(tmp_path / "machine"))
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    _wait_running(2)
    jobs = [(QUESTIONS[i], STEPS[i % 2]) for i in range(8)]
    responses: list[httpx.Response] = []
    for _ in range(3):  # until both replicas answered (fresh replicas may get no share of the first batch)
        with cf.ThreadPoolExecutor(8) as pool:
            responses += list(pool.map(lambda job: _ask(base, job[0], job[1], 8), jobs))
        if len({r.headers.get("x-swift-replica") for r in responses}) == 2:
            break
    assert [r.status_code for r in responses] == [200] * len(responses)
    for (question, _), resp in zip(jobs * 3, responses):
        assert resp.json()["choices"][0]["message"]["content"] == _expected(reference, question, 8)
    assert len({r.headers["x-swift-replica"] for r in responses}) == 2
    records = RayProfileStore(store_actor("store-serve-test"), directory=tmp_path / "machine").list()
    _assert_profiles_valid(records, Counter(step for _, step in (jobs * 3)[: len(responses)]))
    # machine-local files (kernels, costs) stayed in this machine's measurement folder, outside the actor's
    assert (cluster / "_costs").is_dir() and not (tmp_path / "machine" / "_costs").exists()


# -- configuration and command line -------------------------------------------------------------------


def test_the_documented_config_file_builds(cluster):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((Path(__file__).parents[1] / "docs" / "serve" / "ray_serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc)
    (app,) = schema.applications
    assert app.import_path == "swift_integrations.serve.ray_serve:build_app"
    settings = ReplicaSettings.model_validate(app.args)
    assert settings.store in ("directory", "actor")
    options = {d.name: d for d in app.deployments}
    assert "SwiftReplica" in options and options["SwiftReplica"].autoscaling_config


def test_settings_reject_bad_values_with_one_clear_error():
    with pytest.raises(ValueError, match="cpu_kernels"):
        ReplicaSettings(config={"cpu_kernels": "nope"})
    with pytest.raises(ValueError, match="replicas"):
        ReplicaSettings(replicas=0)
    with pytest.raises(ValueError, match="nonsense"):
        ReplicaSettings.model_validate({"nonsense": 1})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--host", "0.0.0.0"], "needs an API key"),
        (["--replicas", "0"], "--replicas"),
    ],
)
def test_ray_command_line_errors_are_one_line(flags, message):
    env = {k: v for k, v in os.environ.items() if k != "SWIFT_API_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "swift_integrations.serve", "--ray", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

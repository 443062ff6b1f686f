"""The GenRM as a service: critiques from an OpenAI-compatible server instead of this process.

Why this file exists: the authors do not sample their GenRM inside the trainer. They serve it
(SGLang servers behind a router, on GPUs of their own) and send each correct rollout's critic
prompt over HTTP, with up to 16,384 new tokens. A long critique then never holds the policy's
GPU, and the GenRM can be any size a server can run. ServedJudge is called like
judge.GenRMJudge, judge(rows, responses) -> judge.Verdicts, and asks exactly what it asks:

  * the prompt is the row's task's `critic_prompt`; a task with `chat_template` (math) goes to
    /v1/chat/completions as one user turn, so the server applies the GenRM's own chat template
    (GenRMJudge applies the tokenizer's); a task without (the toy world) goes to /v1/completions
    as raw text, with no special tokens added (GenRMJudge encodes with add_special_tokens=False);
  * the verdict is genrm.policy_verdict of the critique; `truncated` = finish_reason "length";
  * greedy (temperature 0) sends one request per distinct prompt text and maps the verdicts back
    to the rollouts; sampling sends one request per rollout;
  * the sampling is set in full in each request (top_p 1, top_k off, min_p 0, no repetition
    penalty), as our sampler does it: vLLM and SGLang otherwise take defaults from the model's
    generation_config.json (Qwen's instruct models set top_k and top_p there).

Serve a GenRM on GPUs of its own, one server per GPU, with a context for the critic prompt (the
problem and the whole response) plus the critique:

    vllm serve Qwen/Qwen3-4B-Instruct-2507 --host 0.0.0.0 --port 8000 --max-model-len 32768
    python -m sglang.launch_server --model-path Qwen/Qwen3-4B-Instruct-2507 --host 0.0.0.0 --port 8000 \
        --context-length 32768
    python -m sglang_router.launch_router --worker-urls http://H1:8000 http://H2:8000   # the authors' router

then point training at the server or the router (no --genrm folder is loaded):

    python train_policy.py ... --judge genrm --genrm-url http://GENRM_HOST:8000 --genrm-max-new-tokens 16384

The server must not split the critique off with a reasoning parser: the verdict is read from the
whole text. bench/serve_genrm.sh serves a model folder with vLLM's CPU build, as the tests do.

Failures: connection errors, timeouts and 5xx / 429 answers are retried `retries` times with
exponential backoff (backoff, 2 x backoff, ...); a 4xx answer (a prompt longer than the
server's context, an unknown model) is not. Either way a request that cannot be answered ends
the run with judge.JudgeUnavailable, one line naming the URL and the reason: a judge that cannot
answer must never read as "not flawed". The first request that fails for good makes the others
give up; a server that hangs costs (retries + 1) x timeout first.

Simplified away: no per-request `seed` is sent. A fixed one would give the same critique to
equal rollouts (the point of sampling them separately is lost) and a counted one would have to
be checkpointed, and a server batches requests differently from run to run anyway, so a sampled
served judge is not reproducible and a resumed run does not continue its exact critiques (the
in-process GenRMJudge does). Greedy verdicts are a function of the prompt up to the server's
numerics. A served model without a chat template is an error on the chat path (GenRMJudge
falls back to raw text). No streaming, no load balancing across several URLs (use a router).
Environment proxies are ignored: the GenRM server is on your own network.
"""
import http.client
import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from fapo_mini.errors import UserError
from fapo_mini.genrm import NO_ERROR, policy_verdict
from fapo_mini.judge import JudgeUnavailable, Verdicts
from fapo_mini.tasks import task_of

# the whole sampling rule, so the server's defaults (generation_config.json) cannot change it
SAMPLING = {"top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}


class _Fail(Exception):
    """A request that failed; `retry` says whether trying again may help."""

    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.reason, self.retry = reason, retry


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _server_message(body: bytes) -> str:
    """The message of an error answer: vLLM / SGLang / OpenAI send {"error": {"message"}} or {"message"}."""
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else err
        return _one_line(msg if msg else body.decode(errors="replace"))
    except (ValueError, AttributeError):
        return _one_line(body.decode(errors="replace"))


class ServedJudge:
    """judge = ServedJudge("http://host:8000"); judge(rows, responses) -> Verdicts.

    url: the server (a trailing /v1 is accepted); model: the served name (None: the one model
    GET /v1/models lists); concurrency: requests in flight; timeout: seconds a request may wait
    for its answer; retries: tries after the first on a connection error, timeout, 5xx or 429,
    waiting backoff, 2 x backoff, ... seconds in between."""

    def __init__(self, url: str, model: str | None = None, max_new_tokens: int = 16384, temperature: float = 0.0,
                 concurrency: int = 16, timeout: float = 600.0, retries: int = 5, backoff: float = 1.0):
        url = url.rstrip("/")
        self.url = url[:-3] if url.endswith("/v1") else url
        if not self.url.startswith(("http://", "https://")):
            raise UserError(f"--genrm-url {url}: not an http:// or https:// URL")
        if max_new_tokens < 1 or temperature < 0 or concurrency < 1 or timeout <= 0 or retries < 0 or backoff < 0:
            raise UserError(f"--genrm-url {url}: need max_new_tokens >= 1, temperature >= 0, concurrency >= 1, "
                            "timeout > 0, retries >= 0, backoff >= 0")
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self._open = urllib.request.build_opener(urllib.request.ProxyHandler({})).open
        self.model = model if model is not None else self._served_model()

    # ------------------------------------------------------------------ HTTP

    def _send(self, path: str, body: dict | None = None, stop: threading.Event | None = None) -> dict:
        """GET (body None) or POST JSON to url + path, with retries; the answer's JSON, or JudgeUnavailable.
        A set `stop` (another request failed for good) ends the waiting between tries."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        stop = stop or threading.Event()
        for attempt in range(self.retries + 1):
            if attempt and stop.wait(self.backoff * 2 ** (attempt - 1)):
                raise JudgeUnavailable(f"--genrm-url {self.url}: abandoned after another request failed")
            try:
                return self._try(request)
            except _Fail as e:
                if not e.retry or attempt == self.retries:
                    tries = f" after {attempt + 1} tr{'y' if attempt == 0 else 'ies'}" if e.retry else ""
                    raise JudgeUnavailable(f"--genrm-url {self.url}: {request.get_method()} {path} failed{tries}: "
                                           f"{e.reason}") from None

    def _try(self, request) -> dict:
        try:
            with self._open(request, timeout=self.timeout) as answer:
                body = answer.read()
        except urllib.error.HTTPError as e:
            status = f"HTTP {e.code}: {_server_message(e.read())}"
            raise _Fail(status, retry=e.code >= 500 or e.code == 429) from None
        except urllib.error.URLError as e:           # refused, unknown host, a timeout while connecting
            raise _Fail(_one_line(e.reason), retry=True) from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as e:   # a timeout, reset or cut answer
            raise _Fail(_one_line(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__), retry=True) from None
        try:
            return json.loads(body)
        except ValueError:
            raise _Fail(f"the answer is not JSON: {_one_line(body.decode(errors='replace'), 120)}", retry=False) from None

    def _served_model(self) -> str:
        ids = [m.get("id") for m in self._send("/v1/models", None).get("data", [])]
        if len(ids) != 1:
            raise UserError(f"--genrm-url {self.url}: serves {len(ids)} models {ids}; name one with --genrm-model")
        return ids[0]

    # ------------------------------------------------------------------ critiques

    def request(self, row: dict, response: str) -> tuple[str, dict]:
        """The endpoint and body for one rollout's critique (the prompt GenRMJudge.prompt builds)."""
        task = task_of(row)
        text = task.critic_prompt(row, response)
        body = {"model": self.model, "max_tokens": self.max_new_tokens, "temperature": self.temperature, **SAMPLING}
        if task.chat_template:
            return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": text}]}
        return "/v1/completions", {**body, "prompt": text, "add_special_tokens": False}

    def _critique(self, path: str, body: dict, stop: threading.Event, failed: list) -> tuple[str, str]:
        """(text, finish_reason) of one request. A request that fails for good is put in `failed`
        and sets `stop`, so the others give up instead of retrying."""
        try:
            choice = self._send(path, body, stop)["choices"][0]
            text = choice["message"]["content"] if path == "/v1/chat/completions" else choice["text"]
            return text or "", choice.get("finish_reason")
        except (KeyError, IndexError, TypeError):
            error = JudgeUnavailable(f"--genrm-url {self.url}: POST {path}: the answer has no choices[0] text")
        except JudgeUnavailable as e:
            error = e
        if not stop.is_set():
            failed.append(error)
            stop.set()
        raise error

    def critiques(self, rows: list[dict], responses: list[str]) -> tuple[list[tuple[str, str]], int]:
        """One (critique text, finish_reason) per rollout, and the number of requests sent."""
        asks = [self.request(r, s) for r, s in zip(rows, responses)]
        keys = [json.dumps(a, sort_keys=True) for a in asks]
        greedy = self.temperature == 0               # greedy: one request per distinct (endpoint, body)
        unique = dict(zip(keys, asks)) if greedy else dict(enumerate(asks))
        stop, failed = threading.Event(), []
        pool = ThreadPoolExecutor(self.concurrency)
        try:
            answers = list(pool.map(lambda ask: self._critique(*ask, stop, failed), unique.values()))
        except JudgeUnavailable:
            raise failed[0] from None          # the first failure, not a request it made give up
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        if greedy:                                   # back from distinct requests to rollouts
            of_key = dict(zip(unique, answers))
            answers = [of_key[k] for k in keys]
        return answers, len(unique)

    def __call__(self, rows: list[dict], responses: list[str]) -> Verdicts:
        if not rows:
            return Verdicts([])
        answers, sent = self.critiques(rows, responses)
        verdicts = [(policy_verdict(text), reason == "length") for text, reason in answers]
        return Verdicts([v is not None and v != NO_ERROR for v, _ in verdicts], sum(v is None for v, _ in verdicts),
                        sum(cut for _, cut in verdicts), sent)

"""A served judge that stops answering mid-run (train_policy.py --genrm-url, fapo_mini/rl.py).

The run must end with one line naming the URL, keep every step it took (a checkpoint of the
last one is written then), and, run again once the judge answers, end exactly where a run
that never lost its judge ends. The judge is a stand-in OpenAI-compatible server on
127.0.0.1 whose critique is a fixed verdict, so both runs see the same judge; the real-server
checks of the served judge against vLLM are in test_served_judge.py.
"""
import os
import subprocess
import sys
import threading

from fapo_mini import toyworld
from test_rl import ROOT, metrics, mixed_policy_dir, policy_args, tok, toy_problems  # noqa: F401 (fixtures)
from test_served_judge import Scripted


class StandIn:
    """/v1/models lists "toy"; /v1/completions answers "the first wrong step is \\boxed{0}" (every
    correct rollout flawed) until `fail_after` completions were answered, then HTTP 500."""

    def __init__(self, fail_after=None):
        self.posts, self.fail_after, self.lock = 0, fail_after, threading.Lock()
        self.server = Scripted(self.answer, models=("toy",))
        self.url = self.server.url

    def answer(self, path, body):                       # the server answers from several threads
        with self.lock:
            if self.fail_after is not None and self.posts >= self.fail_after:
                return 500, {"error": {"message": "down"}}
            self.posts += 1
        return 200, {"choices": [{"text": "the first wrong step is \\boxed{0}", "finish_reason": "stop"}]}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.close()


def train(tmp_path, mixed_policy_dir, data, out, steps, url):
    args = policy_args(mixed_policy_dir, data, tmp_path / out, 1.0, steps, 2)
    args[args.index("oracle")] = "genrm"
    args += ["--genrm-url", url, "--genrm-retries", 0, "--genrm-timeout", 30]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "train_policy.py"), *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def without_times(lines):
    return [{k: v for k, v in line.items() if not k.startswith("time_")} for line in lines]


def test_judge_lost_mid_run_saves_the_last_step_and_resumes_exactly(tmp_path, mixed_policy_dir, toy_problems):
    data = tmp_path / "train.jsonl"
    toyworld.write_jsonl(data, toyworld.policy_rows(toy_problems, "train"))
    with StandIn() as judge:                                   # how many critiques step 1 asks for
        assert train(tmp_path, mixed_policy_dir, data, "probe", 1, judge.url).returncode == 0
        first_step = judge.posts
    assert first_step > 0
    with StandIn() as judge:
        straight = train(tmp_path, mixed_policy_dir, data, "straight", 3, judge.url)
    assert straight.returncode == 0, straight.stderr[-2000:]

    with StandIn(fail_after=first_step) as judge:              # answers step 1, then fails
        lost = train(tmp_path, mixed_policy_dir, data, "run", 3, judge.url)
        url = judge.url
    assert lost.returncode == 2 and lost.stderr.strip().splitlines()[-1] == (
        f"error: --genrm-url {url}: POST /v1/completions failed after 1 try: HTTP 500: down; step 2 was not taken; "
        f"{tmp_path / 'run'} holds step 1: run the same command to resume once the judge answers"), lost.stderr[-2000:]
    assert [p.name for p in (tmp_path / "run" / "ckpt").iterdir()] == ["step_00000001"]
    assert [line["step"] for line in metrics(tmp_path / "run")] == [1]

    with StandIn() as judge:                                   # the judge is back: the same command resumes
        resumed = train(tmp_path, mixed_policy_dir, data, "run", 3, judge.url)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout + resumed.stderr, resumed.stderr[-2000:]
    lines = metrics(tmp_path / "run")
    assert without_times(lines) == without_times(metrics(tmp_path / "straight"))
    assert all(line["judge_fp_ratio"] in (None, 1.0) for line in lines)      # the stand-in flags every one

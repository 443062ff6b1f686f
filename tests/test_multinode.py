"""Two torchrun agents rendezvousing on localhost (2 nodes x 1 process) equal one node with 2 processes.

Why this file exists: going from one node to many is only a change of torchrun flags
(`--nnodes --node-rank --rdzv-backend c10d --rdzv-endpoint HOST:PORT`); nothing in the
code knows about nodes. This test checks it: the same 2-step run (DDP, gloo) is started
once as `--standalone --nproc_per_node 2` and once as two agents that meet at a c10d
rendezvous on a free local port, and the metrics lines and saved weights must be equal.
"""
import os
import subprocess
import sys

from safetensors.torch import load_file

from test_resume import assert_same, metrics
from test_rl import (ROOT, free_port, mixed_policy_dir, policy_args, run_script, tok,  # noqa: F401 (fixtures)
                     toy_problems)
from fapo_mini import toyworld


def test_two_node_rendezvous_equals_single_node(tmp_path, mixed_policy_dir, toy_problems):
    data = tmp_path / "train.jsonl"
    toyworld.write_jsonl(data, toyworld.policy_rows(toy_problems, "train"))
    args = lambda out: [str(a) for a in policy_args(mixed_policy_dir, data, tmp_path / out, 1.0, 2, 2)]
    run_script("train_policy.py", args("one_node"), nproc=2)

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                                f"--node-rank={r}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                                "--rdzv-id=test", str(ROOT / "train_policy.py"), *args("two_nodes")],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for r in range(2)]
    for a in agents:
        out, err = a.communicate(timeout=300)
        assert a.returncode == 0, out[-2000:] + err[-3000:]
    assert [m["step"] for m in metrics(tmp_path / "two_nodes")] == [1, 2]
    assert metrics(tmp_path / "two_nodes") == metrics(tmp_path / "one_node")
    a, b = (tmp_path / d / "ckpt" / "step_00000002" / "model" / "model.safetensors" for d in ("one_node", "two_nodes"))
    assert_same(load_file(a), load_file(b), "weights")

"""The supervised warm start (fapo_mini/sft.py): its loss against a hand computation, and
2 DDP ranks (gloo) against one process on the same batches.

Why this file exists: the demo's warm starts run as 2 ranks x 1 thread. Splitting a batch
over ranks must not change the step: each rank's loss is divided by the WHOLE batch's
completion tokens and DDP's average is turned back into a sum, so the ranks' parameters
after a few AdamW steps must equal the one-process run's (1e-5, as in test_fsdp.py: AdamW
turns rounding of a gradient near 0 into up to lr of difference).
"""
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from fapo_mini import dist, parallel, sft, update
from fapo_mini.errors import UserError
from fapo_mini.toyworld import make_tokenizer
from test_rl import free_port

WORLD = 2
PAIRS = [("a=1;b=a+2;?b\n", "b=1+2=3\nans=3"), ("a=5;?a\n", "ans=5"), ("#a=4;b=a*3;c=b+8;?c\n", "ans=4"),
         ("a=9;b=a-1;?b\n", "b=9-1=8\nans=8"), ("a=2;b=a*7;c=b-3;d=c+1;?d\n", "b=2*7=4\nc=4-3=1\nd=1+1=2\nans=2")]
BATCH, STEPS = 5, 4          # 5 rows over 2 ranks: 3 and 2, with different token counts


def examples():
    return sft.tokenize_pairs(PAIRS, make_tokenizer())


def test_loss_is_the_mean_nll_of_completion_tokens():
    """sft_loss against a loop over rows: -log p of each completion token (EOS included) given
    the tokens before it, one unpacked forward per row, averaged over all those tokens."""
    tok = make_tokenizer()
    model = sft.new_model("d64-l2", tok, seed=3).eval()
    ex = examples()
    nll, count = 0.0, 0
    with torch.no_grad():
        for p, c in ex:
            seq = torch.tensor(p + c)
            h = model(seq, torch.arange(len(seq)), torch.tensor([0, len(seq)], dtype=torch.int32), len(seq))
            logp = torch.log_softmax(model.lm_head(h).double(), -1)
            nll -= sum(logp[len(p) - 1 + j, c[j]].item() for j in range(len(c)))
            count += len(c)
        ours = sft.sft_loss(model, update.pack_pairs(ex, "cpu")).item()
    assert count == sft.completion_tokens(ex)
    assert abs(ours - nll / count) < 1e-5


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    info = dist.setup()
    model = sft.new_model("d64-l2", make_tokenizer(), seed=3)
    losses = sft.train(parallel.wrap(model, info, fsdp=False), examples(), STEPS, BATCH, 1e-3, seed=7,
                       rank=info.rank, world_size=info.world_size)
    torch.save((losses, {k: v.detach().clone() for k, v in model.named_parameters()}),
               Path(out_dir) / f"rank{rank}.pt")
    dist.cleanup()


def test_two_ranks_take_the_one_process_steps(tmp_path):
    torch.set_num_threads(1)
    model = sft.new_model("d64-l2", make_tokenizer(), seed=3)
    losses = sft.train(model, examples(), STEPS, BATCH, 1e-3, seed=7)
    mp.spawn(worker, args=(free_port(), tmp_path), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        rank_losses, rank_params = torch.load(tmp_path / f"rank{rank}.pt")
        # the same fp32 sums in another order (two shards, then an all-reduce): a few ulps apart
        assert max(abs(a - b) / abs(a) for a, b in zip(losses, rank_losses)) < 1e-6
        for k, v in model.named_parameters():
            torch.testing.assert_close(rank_params[k], v.detach(), atol=1e-5, rtol=0)
    assert losses[-1] < losses[0]                      # the steps did something


def test_a_batch_smaller_than_the_ranks_is_a_user_error():
    model = sft.new_model("d64-l2", make_tokenizer(), seed=3)
    with pytest.raises(UserError, match="a batch of 1 rows cannot feed 2 ranks"):
        sft.train(model, examples(), 1, 1, 1e-3, rank=0, world_size=2)


def test_a_stopped_warm_start_saves_its_weights_marked_incomplete(tmp_path, capsys):
    """Ctrl-C finishes the step, saves the weights so far with INCOMPLETE beside them, exits 130
    with one line (no traceback); load_model warns on such a folder; a whole run removes the mark."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from fapo_mini.model import load_model
    root = Path(__file__).resolve().parents[1]
    make_tokenizer().save_pretrained(tmp_path / "tok")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "fapo_mini.sft", "--data", str(data), "--tokenizer", str(tmp_path / "tok"),
            "--new-model", "d32-l1", "--out", str(out), "--batch-size", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    with open(tmp_path / "stderr", "w") as se:
        proc = subprocess.Popen(argv + ["--steps", "1000000"], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=se)
        log = out / "sft_log.jsonl"
        t_end = time.time() + 120
        while not (log.exists() and log.read_text().count("\n") >= 2):     # inside the loop: the handler is set
            assert proc.poll() is None and time.time() < t_end, (tmp_path / "stderr").read_text()
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    err = (tmp_path / "stderr").read_text()
    assert "Traceback" not in err, err
    k = len(log.read_text().splitlines())
    assert 2 <= k < 1000000
    last = err.strip().splitlines()[-1]
    assert last == (f"stopped after step {k} of 1000000: the weights so far are in {out}, marked by "
                    f"{out / 'INCOMPLETE'}; run again for the whole warm start"), last
    assert (out / "INCOMPLETE").read_text() == f"sft stopped after step {k} of 1000000\n"
    capsys.readouterr()
    assert load_model(out).cfg.hidden_size == 32
    assert capsys.readouterr().err == f"warning: {out / 'INCOMPLETE'}: sft stopped after step {k} of 1000000\n"
    done = subprocess.run(argv + ["--steps", "2"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (out / "INCOMPLETE").exists()

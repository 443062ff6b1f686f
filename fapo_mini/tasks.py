"""Tasks: what a row's `data_source` means to the trainers.

Why this file exists: FAPO needs three things from a data set, and only these differ
between math, a toy world or the next RLVR idea a fork brings:
  * the outcome check: is a response's final answer right? (docs/method.md §2)
  * the critic prompt: the text the GenRM judges a correct rollout from (§3)
  * optionally, an exact step oracle: the index of the first wrong step, or -1 (§1);
    real data has none, a synthetic world may (`--judge oracle`, the `fp_ratio` metric).
A task bundles them; rows pick theirs by `data_source`, and a source nobody registered
is math (DAPO's boxed-answer rule and the authors' policy-time GenRM prompt).

A new task is one small file that builds a Task and calls `register` (fapo_mini/toytask.py
is a whole example). The trainers import the files named in PLUGINS when they exist, so
deleting one (a fork without the toy world) leaves every other task as it was.
"""
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable

from fapo_mini.genrm import policy_critic_prompt
from fapo_mini.verify import math_correct


@dataclass(frozen=True)
class Task:
    name: str
    is_correct: Callable[[str, str], bool]       # (response, ground truth as str) -> is the final answer right?
    critic_prompt: Callable[[dict, str], str]    # (row, response) -> the GenRM's user turn
    chat_template: bool = True                   # send critic_prompt through the GenRM's chat template
    first_error: Callable[[dict, str], int] | None = None   # (row, response) -> first wrong step or -1; None: no oracle


def math_critic_prompt(row: dict, response: str) -> str:
    """The authors' policy-time prompt (docs/method.md §3): problem, ground truth, the whole solution.
    They send the raw question (`extra_info.question`) when a row has one, not the prompt with its
    instruction suffix; otherwise the last user turn."""
    p = row["prompt"]
    problem = (row.get("extra_info") or {}).get("question") or (
        p if isinstance(p, str) else [m for m in p if m["role"] == "user"][-1]["content"])
    return policy_critic_prompt(problem, row["reward_model"]["ground_truth"], response)


MATH = Task("math", is_correct=math_correct, critic_prompt=math_critic_prompt)
TASKS: dict[str, Task] = {}                       # data_source -> Task; anything else is MATH


def register(task: Task, *data_sources: str) -> None:
    for source in data_sources:
        TASKS[source] = task


def task_of(row: dict) -> Task:
    return TASKS.get(row.get("data_source"), MATH)


def ground_truth(row: dict) -> str:
    """verl stores ground truths as strings or numbers; every check reads a string."""
    return str(row["reward_model"]["ground_truth"])


def is_correct(row: dict, response: str) -> bool:
    return task_of(row).is_correct(response, ground_truth(row))


# Task files outside the core library, imported when present.
PLUGINS = ("fapo_mini.toytask",)
for _name in PLUGINS:
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)

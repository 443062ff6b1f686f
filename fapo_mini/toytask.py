"""The toy world as a task: rows with `data_source` "toyworld" (fapo_mini/tasks.py).

Its three parts, each from the world's own files:
  * outcome check: the last `ans=` value equals the ground truth (toyworld.is_correct);
  * critic prompt: the compact numbered listing a 4-layer GenRM can read (toycritic.critic_prompt),
    sent as is, with no chat template;
  * exact step oracle: the first wrong line, or -1 (toyworld.first_error), which real data
    never has: it powers `--judge oracle` and the `fp_ratio` metric.
"""
from fapo_mini import toycritic, toyworld
from fapo_mini.tasks import Task, register

TOY = Task("toyworld",
           is_correct=toyworld.is_correct,
           critic_prompt=lambda row, response: toycritic.critic_prompt(row["prompt"], response),
           chat_template=False,
           first_error=lambda row, response: toyworld.first_error(row["prompt"], response))
register(TOY, "toyworld")

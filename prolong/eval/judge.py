"""Model-judged QA and summarization through any OpenAI-compatible chat endpoint (prolong.chat_client,
with its retries and timeouts).

The judge follows HELMET's scheme: QA = fluency (0/1) x correctness (0-3) / 3; summaries = F1 of key-point
recall and sentence precision. Prompts are ours (HELMET's are long); scores are labelled `judge_*`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from prolong.chat_client import ChatClient

QA_PROMPT = """Judge a model's answer to a question about a long story.
Question: {question}
Reference answers: {answers}
Model answer: {output}

Rate fluency (1 if the answer is fluent, relevant text, 0 if it is garbled or repetitive) and correctness
(0 = wrong, 1 = partially correct, 2 = mostly correct, 3 = fully correct against the references).
Reply with JSON only: {{"fluency": 0 or 1, "correctness": 0-3}}"""

RECALL_PROMPT = """Here is a summary of a legal case and a list of key points.
Summary: {output}
Key points:
{keypoints}
For each key point say whether the summary states it. Reply with JSON only: {{"supported": [true/false, ...]}}"""

PRECISION_PROMPT = """Here is a reference summary and the sentences of a candidate summary.
Reference: {reference}
Candidate sentences:
{sentences}
For each candidate sentence say whether the reference supports it. Reply with JSON only:
{{"supported": [true/false, ...]}}"""


class OpenAIJudge:
    """A judge model behind an OpenAI-compatible endpoint: `base_url` like http://localhost:8000/v1.

    Failed requests are retried (prolong.chat_client); an endpoint that stays down, or refuses the
    request, raises ChatEndpointError. A reply that is not JSON scores 0, as in HELMET.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0,
                 max_retries: int = 5, backoff_s: float = 1.0) -> None:
        self.client = ChatClient(base_url, model, api_key, max_retries, timeout, backoff_s)

    def ask(self, prompt: str) -> dict[str, Any]:
        """Send one user message at temperature 0; the first JSON object of the reply."""
        reply = self.client.complete(prompt, max_tokens=512)
        match = re.search(r"\{.*\}", reply, flags=re.DOTALL)
        try:
            return json.loads(match.group(0)) if match else {}
        except json.JSONDecodeError:
            return {}

    def score_qa(self, question: str, answers: list[str], output: str) -> dict[str, float]:
        """judge_score = fluency x correctness / 3 (0..1)."""
        verdict = self.ask(QA_PROMPT.format(question=question, answers=json.dumps(answers), output=output))
        fluency = float(verdict.get("fluency", 0) or 0)
        correctness = float(verdict.get("correctness", 0) or 0)
        return {"judge_fluency": fluency, "judge_correctness": correctness / 3,
                "judge_score": fluency * correctness / 3}

    def score_summary(self, reference: str, keypoints: list[str], output: str) -> dict[str, float]:
        """Key-point recall, sentence precision and their F1 (0..1)."""
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", output.strip()) if s]
        recall = precision = 0.0
        if keypoints:
            listed = "\n".join(f"{i + 1}. {k}" for i, k in enumerate(keypoints))
            flags = self.ask(RECALL_PROMPT.format(output=output, keypoints=listed)).get("supported", [])
            recall = sum(bool(f) for f in flags[: len(keypoints)]) / len(keypoints)
        if sentences:
            listed = "\n".join(f"{i + 1}. {s}" for i, s in enumerate(sentences))
            flags = self.ask(PRECISION_PROMPT.format(reference=reference, sentences=listed)).get("supported", [])
            precision = sum(bool(f) for f in flags[: len(sentences)]) / len(sentences)
        f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
        return {"judge_recall": recall, "judge_precision": precision, "judge_f1": f1}

"""What each council call is asked: the agents' instructions, the ranking question, the verdict.

Pure: a `GenerationRequest` in, a `GenerationRequest` out. An agent sees the user's conversation
under its role's instructions (the client's own system prompt follows them); the Director sees
the conversation under an aggregation prompt holding the agents' answers — Mixture-of-Agents'
aggregate-and-synthesize step: the answers are material to weigh, not to trust. Agents answer in
plain text (no tools, no JSON mode); the Director answers the client's request as asked — its
tools, response format, stops and sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from konsilium.config import AgentSeat
from model_store.types import GenerationRequest, JsonOutput, Message

LANGUAGE = "Answer in the language the user writes in."

ROLE_INSTRUCTIONS: dict[str, str] = {
    "dev": "You are the council's senior software developer. Give a correct, idiomatic, working solution: "
    "the code or the change itself, then its trade-offs in a few sentences.",
    "security": "You are the council's application security engineer. Find the vulnerabilities and risks "
    "(injection, XSS, authentication, secrets, unsafe defaults, dependencies), say how each can be exploited "
    "and how to fix it. Say so plainly when you find none.",
    "qa": "You are the council's QA engineer. Name the edge cases and failure modes, the tests that would "
    "catch them (concrete test cases or test code) and what the current answer or code gets wrong.",
    "architect": "You are the council's software architect. Judge the design: boundaries, data flow, "
    "coupling, scalability and operability; propose the simplest structure that holds up.",
    "ux": "You are the council's UX designer. Judge what the user of the product sees and does: clarity, "
    "accessibility, error states and copy; propose concrete improvements.",
    "seo": "You are the council's SEO specialist. Judge discoverability: semantic markup, metadata, "
    "performance, structured data and content; propose concrete changes.",
}

VERDICT = """You are the Director of a council of expert agents. Each agent below answered the user's \
latest request from its own role. Weigh their answers critically: any of them may be wrong, \
incomplete or biased, and they may contradict each other — resolve the contradictions, keep what is \
correct and useful, drop the rest, and add what all of them missed. Then give the user one final, \
well-structured answer of your own. Do not merely list or summarise the agents' answers, and do not \
mention the council unless the user asks about it."""

RANKING = """Below are anonymised answers to the user's latest request. Rank them from best to worst \
by correctness, completeness and usefulness. Reply with JSON only: {"ranking": [labels, best first]}."""


def agent_request(generation: GenerationRequest, seat: AgentSeat) -> GenerationRequest:
    """The user's conversation under the agent's instructions, in plain text."""
    instructions = seat.instructions or f"{ROLE_INSTRUCTIONS[seat.role]} {LANGUAGE}"
    return _plain(generation, instructions, max_tokens=seat.max_tokens)


def ranking_request(generation: GenerationRequest, answers: Sequence[tuple[str, str]]) -> GenerationRequest:
    """Rank the anonymised `(label, text)` answers; the labels are the only JSON the ranker may write."""
    labels = [label for label, _ in answers]
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"ranking": {"type": "array", "items": {"enum": labels}, "maxItems": len(labels)}},
        "required": ["ranking"],
    }
    listing = "\n\n".join(f"Answer {label}:\n{text}" for label, text in answers)
    request = _plain(generation, f"{RANKING}\n\n{listing}", max_tokens=16 + 8 * len(labels))
    return msgspec.structs.replace(request, json_output=JsonOutput(schema=schema), temperature=0.0)


def director_request(
    generation: GenerationRequest,
    answers: Sequence[tuple[str, str]],
    *,
    ranking: Sequence[str] = (),
    instructions: str | None = None,
    max_tokens: int | None = None,
) -> GenerationRequest:
    """The client's request as asked, with the agents' `(role, text)` answers in front of it."""
    listing = "\n\n".join(f'<answer agent="{role}">\n{text}\n</answer>' for role, text in answers)
    system = f"{instructions or VERDICT} {LANGUAGE}\n\n{listing}"
    if ranking:
        system += f"\n\nThe agents' peer ranking, best first: {', '.join(ranking)}."
    messages = _under(system, generation.messages)
    return msgspec.structs.replace(
        generation, messages=messages, max_tokens=max_tokens or generation.max_tokens, stream=True
    )


def _plain(generation: GenerationRequest, system: str, *, max_tokens: int | None) -> GenerationRequest:
    return GenerationRequest(
        kind="chat",
        messages=_under(system, generation.messages),
        max_tokens=max_tokens,
        temperature=generation.temperature,
        top_p=generation.top_p,
        seed=generation.seed,
    )


def _under(system: str, messages: Sequence[Message]) -> tuple[Message, ...]:
    """One system message first (many chat templates take no other): ours, then the client's."""
    theirs = [m.content for m in messages if m.role == "system"]
    rest = tuple(m for m in messages if m.role != "system")
    return (Message(role="system", content="\n\n".join([system, *theirs])), *rest)

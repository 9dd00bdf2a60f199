"""The council's pure parts: prompts, the ranking pass, the reasoning blocks, and the privacy
filter's stream restore on the request path (routing/privacy/stream.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from gateway.council_text import Lanes
from konsilium.config import AgentSeat
from model_store.notices import StoreEvent
from model_store.types import (
    Finish,
    GenerationRequest,
    JsonOutput,
    Message,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)
from routing.council import prompts
from routing.council.ranking import combine, labels, parse_ranking
from routing.council.reports import AgentDone, AgentOpened, CallReport
from routing.privacy import Scrubber
from routing.privacy.stream import restored, scrub_request

CHAT = GenerationRequest(
    kind="chat",
    messages=(Message(role="system", content="Be terse."), Message(role="user", content="Review this.")),
    max_tokens=99,
    temperature=0.2,
    tools=(),
    json_output=JsonOutput(),
)


def test_an_agent_reads_its_instructions_then_the_clients_and_answers_in_plain_text() -> None:
    request = prompts.agent_request(CHAT, AgentSeat(role="security", max_tokens=64))
    system, user = request.messages
    assert system.role == "system"
    assert system.content.startswith("You are the council's application security")
    assert system.content.endswith("Answer in the language the user writes in.\n\nBe terse.")
    assert user == Message(role="user", content="Review this.")
    assert (request.max_tokens, request.temperature, request.json_output, request.tools) == (64, 0.2, None, ())
    custom = prompts.agent_request(CHAT, AgentSeat(role="qa", instructions="Only list test cases."))
    assert custom.messages[0].content == "Only list test cases.\n\nBe terse."


def test_the_director_weighs_the_answers_and_answers_the_request_as_asked() -> None:
    request = prompts.director_request(CHAT, [("dev", "use bcrypt"), ("qa", "test it")], ranking=["qa", "dev"])
    system = request.messages[0].content
    assert system.startswith(prompts.VERDICT)
    assert '<answer agent="dev">\nuse bcrypt\n</answer>\n\n<answer agent="qa">\ntest it\n</answer>' in system
    assert system.endswith("The agents' peer ranking, best first: qa, dev.\n\nBe terse.")
    assert (request.max_tokens, request.json_output) == (99, JsonOutput()), "the client's own settings"


def test_a_ranking_is_parsed_leniently_and_combined_by_mean_position() -> None:
    known = labels(3)
    assert known == ["A", "B", "C"]
    assert parse_ranking('{"ranking": ["C", "A"]}', known) == ["C", "A", "B"]
    assert parse_ranking('{"ranking": ["C", "C", "Z", "B"]}', known) == ["C", "B", "A"]
    assert parse_ranking('{"ranking": [["A"], {"x": 1}, 7, "B"]}', known) == ["B", "A", "C"], "junk labels dropped"
    assert parse_ranking("C is best", known) is None
    assert parse_ranking('{"ranking": "C"}', known) is None
    assert parse_ranking('["C"]', known) is None
    assert combine([["B", "A", "C"], ["A", "B", "C"], ["B", "C", "A"]], known) == ["B", "A", "C"]
    assert combine([], known) == []
    request = prompts.ranking_request(CHAT, [("A", "x"), ("B", "y")])
    assert request.json_output is not None
    assert request.json_output.schema is not None
    assert request.json_output.schema["properties"] == {
        "ranking": {"type": "array", "items": {"enum": ["A", "B"]}, "maxItems": 2}
    }


def report(role: str, status: str = "ok") -> CallReport:
    return CallReport(role=role, status=status, started_ms=0, latency_ms=1, error=None if status == "ok" else "x: y")  # type: ignore[arg-type]


def test_parallel_agents_read_as_one_block_each() -> None:
    lanes = Lanes()
    out = [
        lanes.opened(AgentOpened("dev", "m", None)),
        lanes.opened(AgentOpened("qa", "m", "lora")),
        lanes.text("qa", "Q1 "),
        lanes.text("dev", "D1 "),
        lanes.done(AgentDone(report("qa"), "Q1 ")),  # qa is held while dev is live
        lanes.text("dev", "D2"),
        lanes.done(AgentDone(report("security", "timeout"), "")),  # never spoke
        lanes.opened(AgentOpened("ux", "m", None)),
        lanes.text("ux", "U1"),
        lanes.done(AgentDone(report("dev"), "D1 D2")),  # releases qa and security whole, ux goes live
        lanes.text("ux", "U2"),
        lanes.done(AgentDone(report("ux"), "U1U2")),
    ]
    assert out[2] == ""
    assert out[3] == "D1 "
    assert "".join(out) == (
        "### dev · m\n\nD1 D2\n\n### qa · lora\n\nQ1 \n\n### security\n\n*security: timeout — x: y*\n\n"
        "### ux · m\n\nU1U2\n\n"
    )


async def _events(*events: StoreEvent) -> AsyncGenerator[StoreEvent, None]:
    for event in events:
        yield event


async def _restored(
    request: GenerationRequest, events: Sequence[StoreEvent]
) -> tuple[GenerationRequest, list[StoreEvent]]:
    vault = Scrubber().vault()
    scrubbed = scrub_request(vault, request)
    return scrubbed, [e async for e in restored(vault, _events(*events))]


async def test_a_cloud_request_is_scrubbed_everywhere_and_its_stream_restored_across_chunks() -> None:
    email = "anna@example.org"
    request = GenerationRequest(
        kind="chat",
        messages=(
            Message(role="user", content=f"Mail {email}"),
            Message(
                role="assistant",
                content="",
                tool_calls=(ToolCall(id="c1", name="send", arguments=f'{{"to": "{email}"}}'),),
            ),
        ),
    )
    done = Finish(reason="stop", usage=Usage(1, 1))
    scrubbed, out = await _restored(
        request,
        [TextDelta(text="Sent to <EM"), TextDelta(text="AIL_1> and <EMA"),
         ToolCallDelta(index=0, arguments='{"to": "<EMAIL'), ToolCallDelta(index=0, arguments='_1>"}'),
         ToolCallDelta(index=1, arguments="{}", id="c2", name="log"),
         TextDelta(text=" ok <EMAIL_"), done],
    )  # fmt: skip
    assert scrubbed.messages[0].content == "Mail <EMAIL_1>"
    assert scrubbed.messages[1].tool_calls[0].arguments == '{"to": "<EMAIL_1>"}'
    text = "".join(e.text for e in out if isinstance(e, TextDelta))
    assert text == f"Sent to {email} and <EMA ok <EMAIL_", "an unfinished placeholder goes out as it came"
    assert isinstance(out[2], TextDelta), "text held before a tool call goes out before it"
    calls = [(e.index, e.arguments) for e in out if isinstance(e, ToolCallDelta)]
    assert "".join(a for i, a in calls if i == 0) == f'{{"to": "{email}"}}'
    assert out[-1] == done


def test_every_string_a_cloud_model_reads_is_scrubbed_but_names_it_must_answer_with() -> None:
    vault = Scrubber(["Falcon"]).vault()
    schema = {"type": "object", "properties": {"host": {"enum": ["falcon", "db"], "description": "Falcon or db"}}}
    request = GenerationRequest(
        kind="chat",
        messages=(Message(role="user", content="hi", name="Falcon"),),
        stop=("Falcon",),
        tools=(ToolSpec(name="Falcon", description="Deploy Falcon", parameters=schema),),
        json_output=JsonOutput(schema={"enum": ["Falcon"]}),
    )
    scrubbed = scrub_request(vault, request)
    assert scrubbed.messages[0].name == "<DENYLIST_1>"
    assert scrubbed.stop == ("<DENYLIST_1>",)
    tool = scrubbed.tools[0]
    assert (tool.name, tool.description) == ("Falcon", "Deploy <DENYLIST_1>"), "a tool's name is what the call must say"
    assert tool.parameters == {
        "type": "object",
        "properties": {"host": {"enum": ["<DENYLIST_2>", "db"], "description": "<DENYLIST_1> or db"}},
    }
    assert scrubbed.json_output == JsonOutput(schema={"enum": ["<DENYLIST_1>"]})
    assert schema["properties"]["host"]["enum"] == ["falcon", "db"], "the client's schema is left as it was"  # type: ignore[index]

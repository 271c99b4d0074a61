"""The router's chat-template rendering against transformers' `apply_chat_template` (pure).

The engine test (`test_engine_colocated.py`) checks the ids against vLLM's own /tokenize;
these cover template features the tiny model's template does not use.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from router.chat_template import ChatTemplate, ChatTemplateError, load_chat_template
from router.prepare import CHAT_ROUTE, prepare_request
from router.tokenizer import load_tokenizer
from tests.support.engine_cases import TEMPLATE_CHATS

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}

# A Llama-3-style template: whitespace control, a loop control, an exception for bad
# input, `tojson` with non-ASCII tools, a namespace.
LLAMA_STYLE = """{{- bos_token }}
{%- if tools is not none %}<tools>{{ tools | tojson }}</tools>{% endif %}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}
        {{- raise_exception('unknown role ' + message['role']) }}
    {%- endif %}
    {%- if message['role'] == 'tool' %}{% continue %}{% endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- '<|start|>' + message['role'] + '<|sep|>\n\n' + message['content'] | trim + '<|eot|>' }}
    {%- if message.tool_calls is defined %}{% for call in message.tool_calls %}
        {{- '<call>' + call.function.name + ':' + call.function.arguments.city + '</call>' }}
    {%- endfor %}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|start|>assistant<|sep|>\n\n' }}{% endif %}"""

# A template that loops over content parts (vLLM's "openai" content format).
PARTS_STYLE = """{% for m in messages %}[{{ m.role }}]{% for part in m.content %}{{ part.text }}|{% endfor %}
{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"""

CHATS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "  Be kind.  "}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}],
    [{"role": "user", "content": "naïve 東京 🚀"}, {"role": "tool", "content": "ignored"}],
]


@pytest.mark.parametrize("chat", CHATS, ids=range(len(CHATS)))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_renders_like_transformers(chat: list[dict], generation_prompt: bool) -> None:
    ours = ChatTemplate(LLAMA_STYLE, SPECIAL).render(chat, add_generation_prompt=generation_prompt)
    (theirs,), _ = render_jinja_template(
        [chat], chat_template=LLAMA_STYLE, add_generation_prompt=generation_prompt, **SPECIAL
    )
    assert ours == theirs


def test_tools_reach_the_template_as_transformers_passes_them() -> None:
    tools = [{"type": "function", "function": {"name": "météo", "parameters": {"type": "object"}}}]
    chat = CHATS[0]
    ours = ChatTemplate(LLAMA_STYLE, SPECIAL).render(chat, tools=tools)
    (theirs,), _ = render_jinja_template([chat], tools=tools, chat_template=LLAMA_STYLE, add_generation_prompt=True, **SPECIAL)
    assert ours == theirs and "météo" in ours  # tojson keeps non-ASCII text


def test_tool_call_arguments_sent_as_json_strings_reach_the_template_as_objects() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": json.dumps({"city": "Paris"})}}
    chat = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    assert "<call>weather:Paris</call>" in ChatTemplate(LLAMA_STYLE, SPECIAL).render(chat)


def test_a_chat_the_template_rejects_is_a_chat_template_error() -> None:
    with pytest.raises(ChatTemplateError, match="unknown role robot"):
        ChatTemplate(LLAMA_STYLE, SPECIAL).render([{"role": "robot", "content": "beep"}])


def test_a_template_that_does_not_compile_is_refused() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}")


def test_content_parts_are_joined_for_string_templates_and_kept_for_part_loops() -> None:
    chat = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]}]
    string_style = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not string_style.content_as_parts
    assert string_style.render(chat, add_generation_prompt=False) == "a\nb"
    parts_style = ChatTemplate(PARTS_STYLE)
    assert parts_style.content_as_parts
    assert parts_style.render(chat, add_generation_prompt=False) == "[user]a|b|"
    assert parts_style.render([{"role": "user", "content": "plain"}]) == "[user]plain|[assistant]"


def test_developer_turns_become_one_leading_system_message() -> None:
    template = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    chat = [
        {"role": "system", "content": "A"},
        {"role": "user", "content": "q"},
        {"role": "developer", "content": "B"},
    ]
    assert template.render(chat, add_generation_prompt=False) == "<system>A\n\nB<user>q"
    knows = ChatTemplate("{% for m in messages %}{% if m.role == 'developer' %}D{% endif %}{{ m.content }}{% endfor %}")
    assert knows.render(chat, add_generation_prompt=False) == "AqDB"


def test_continue_final_message_cuts_after_the_final_text() -> None:
    template = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}")
    chat = [{"role": "user", "content": "Count:"}, {"role": "assistant", "content": "one, two,"}]
    ours = template.render(chat, add_generation_prompt=False, continue_final_message=True)
    (theirs,), _ = render_jinja_template(
        [chat], chat_template=template.source, add_generation_prompt=False, continue_final_message=True
    )
    assert ours == theirs == "<user>Count:</user><assistant>one, two,"


def test_template_location_follows_hugging_face(tmp_path: Path) -> None:
    assert load_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<B>", "lstrip": False},
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D"}],
            }
        )
    )
    loaded = load_chat_template(tmp_path)
    assert loaded is not None and loaded.render([{"role": "user", "content": "x"}]) == "<B>D"
    (tmp_path / "chat_template.jinja").write_text("J{{ bos_token }}")
    loaded = load_chat_template(tmp_path)
    assert loaded is not None and loaded.render([{"role": "user", "content": "x"}]) == "J<B>"
    override = tmp_path / "other.jinja"
    override.write_text("O")
    for given in (str(override), "O"):  # a file, or the template text itself
        loaded = load_chat_template(tmp_path, given)
        assert loaded is not None and loaded.render([{"role": "user", "content": "x"}]) == "O"


def test_the_tiny_models_chats_render_like_transformers(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer = load_tokenizer(str(tiny_llama))
    assert tokenizer is not None
    for name, chat in TEMPLATE_CHATS.items():
        if name in ("content-parts", "developer-role"):
            continue  # vLLM's message normalisation, which transformers does not do (engine test)
        ids = tokenizer.encode(tokenizer.render_chat(chat) or "")
        expected = hf.apply_chat_template(
            chat["messages"],
            add_generation_prompt=chat.get("add_generation_prompt", True),
            continue_final_message=chat.get("continue_final_message", False),
            tokenize=True,
            return_dict=False,
        )
        assert ids == expected, name


def _prepare_chat(body: dict, tokenizer) -> object:
    return prepare_request(
        CHAT_ROUTE, json.dumps(body).encode(), {}, request_id_headers=[], session_header="x", tokenizer=tokenizer
    ).descriptor


def test_prepare_routes_chats_by_their_rendered_token_ids(tiny_llama: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_llama))
    assert tokenizer is not None
    messages = [{"role": "system", "content": "Long shared system prompt"}, {"role": "user", "content": "q"}]
    body = {"model": "m", "messages": messages}
    descriptor = _prepare_chat(body, tokenizer)
    rendered = tokenizer.render_chat(body)
    assert rendered is not None and rendered.startswith("<s><|system|>Long shared system prompt")
    assert descriptor.routing_text == rendered  # type: ignore[attr-defined]
    assert descriptor.routing_tokens == tokenizer.encode(rendered)  # type: ignore[attr-defined]


def test_prepare_routes_a_chat_the_template_rejects_by_its_text(tmp_path: Path, tiny_llama: Path) -> None:
    """The engine renders the chat again and answers with its own error; the router does not
    refuse what the engine's template (which may differ) might accept."""
    strict = tmp_path / "strict.jinja"
    strict.write_text("{{ raise_exception('no') }}")
    tokenizer = load_tokenizer(str(tiny_llama), str(strict))
    descriptor = _prepare_chat({"messages": [{"role": "user", "content": "q"}]}, tokenizer)
    assert descriptor.routing_text == "user: q"  # type: ignore[attr-defined]
    bad_kwargs = {"messages": [{"role": "user", "content": "q"}], "chat_template_kwargs": [1]}
    assert _prepare_chat(bad_kwargs, load_tokenizer(str(tiny_llama))).routing_text == "user: q"  # type: ignore[attr-defined]

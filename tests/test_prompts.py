"""Prompt templates (`{column}` only, never code), message columns and token estimates."""

from __future__ import annotations

import json

import pytest

from batchroute.prompts import (
    BadRowInput,
    PromptTemplate,
    build_messages,
    estimate_prompt_tokens,
    messages_from_json,
)

# ---- PromptTemplate.parse -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "shown"),
    [
        ("Label: {x.__class__}", "{x.__class__}"),  # attribute access
        ("Label: {x.__class__.__mro__}", "{x.__class__.__mro__}"),
        ("Label: {x[0]}", "{x[0]}"),  # indexing
        ("Label: {x!r}", "{x!r}"),  # conversion
        ("Label: {x:>10}", "{x:>10}"),  # format spec
        ("Label: {x:{y}}", "{x:{y}}"),  # nested spec
        ("Label: {}", "{}"),  # positional
    ],
)
def test_anything_but_a_plain_column_name_is_rejected(template: str, shown: str) -> None:
    with pytest.raises(ValueError, match="not a plain column name") as caught:
        PromptTemplate.parse(template)
    assert shown in str(caught.value)  # the user sees which placeholder to fix


@pytest.mark.parametrize("template", ["Label: {x", "Label: x}", "{x!}"])
def test_malformed_braces_are_a_value_error_naming_the_template(template: str) -> None:
    with pytest.raises(ValueError, match="prompt template"):
        PromptTemplate.parse(template)


def test_doubled_braces_are_literal_text() -> None:
    tmpl = PromptTemplate.parse('Answer as JSON like {{"label": "x"}} for: {text}')
    assert tmpl.columns == ("text",)
    assert tmpl.render({"text": "hello"}) == 'Answer as JSON like {"label": "x"} for: hello'


def test_column_names_may_hold_spaces_and_dashes() -> None:
    tmpl = PromptTemplate.parse("{ticket body} / {customer-name}")
    assert tmpl.columns == ("ticket body", "customer-name")
    row = {"ticket body": "broken", "customer-name": "Ada"}
    assert tmpl.render(row) == "broken / Ada"


def test_columns_are_listed_once_in_order_of_first_use() -> None:
    tmpl = PromptTemplate.parse("{b} {a} {b} {c}")
    assert tmpl.columns == ("b", "a", "c")


def test_a_template_without_placeholders_is_its_text() -> None:
    tmpl = PromptTemplate.parse("Say hello.")
    assert tmpl.columns == ()
    assert tmpl.render({}) == "Say hello."


# ---- render ---------------------------------------------------------------------------------


def test_render_substitutes_values_without_interpreting_them() -> None:
    tmpl = PromptTemplate.parse("Q{n}: {text} ({score})")
    # A value that looks like a template stays as it is: substitution is not recursive.
    row = {"n": 3, "text": "{text.__class__} {n}", "score": 0.5, "unused": None}
    assert tmpl.render(row) == "Q3: {text.__class__} {n} (0.5)"


def test_render_raises_bad_row_input_on_a_null_value() -> None:
    tmpl = PromptTemplate.parse("Label: {text}")
    with pytest.raises(BadRowInput, match="'text' is null"):
        tmpl.render({"text": None})


@pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
def test_render_raises_bad_row_input_on_an_empty_cell(blank: str) -> None:
    # A blank cell would send the template's bare text to a paid model: the row fails instead.
    with pytest.raises(BadRowInput, match="'text' is empty"):
        PromptTemplate.parse("Label: {text}").render({"text": blank})
    assert PromptTemplate.parse("{n}").render({"n": 0}) == "0"  # zero is not empty


def test_build_messages_puts_the_system_prompt_first() -> None:
    row = {"text": "parcel damaged", "lang": "French"}
    messages = build_messages(
        row,
        prompt=PromptTemplate.parse("Label: {text}"),
        system=PromptTemplate.parse("Answer in {lang}."),
        messages_column=None,
    )
    assert messages == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Label: parcel damaged"},
    ]


def test_a_null_in_the_system_prompt_fails_the_row_too() -> None:
    with pytest.raises(BadRowInput, match="'lang' is null"):
        build_messages(
            {"text": "x", "lang": None},
            prompt=PromptTemplate.parse("{text}"),
            system=PromptTemplate.parse("Answer in {lang}."),
            messages_column=None,
        )


# ---- messages_from_json ---------------------------------------------------------------------

GOOD = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("raw", [json.dumps(GOOD), json.dumps(GOOD).encode(), GOOD])
def test_messages_from_json_accepts_text_bytes_or_a_list(raw: object) -> None:
    assert messages_from_json(raw, column="msgs") == GOOD


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "'msgs' is null"),
        ("[{", "'msgs' is not valid JSON"),
        ("[]", "non-empty JSON list"),
        ('{"role": "user", "content": "Hi"}', "non-empty JSON list"),
        ('"just text"', "non-empty JSON list"),
        (42, "non-empty JSON list"),
        ('[{"role": "user"}]', "needs 'role' and 'content'"),
        ('[{"content": "Hi"}]', "needs 'role' and 'content'"),
        ('["Hi"]', "needs 'role' and 'content'"),
    ],
)
def test_messages_from_json_rejects_what_is_not_a_message_list(raw: object, reason: str) -> None:
    with pytest.raises(BadRowInput, match=reason):
        messages_from_json(raw, column="msgs")


def test_build_messages_reads_the_messages_column() -> None:
    row = {"msgs": json.dumps(GOOD)}
    assert build_messages(row, prompt=None, system=None, messages_column="msgs") == GOOD


# ---- estimate_prompt_tokens -----------------------------------------------------------------


def test_token_estimate_grows_with_the_text() -> None:
    def estimate(text: str) -> int:
        return estimate_prompt_tokens([{"role": "user", "content": text}])

    short, medium, long = estimate("x" * 40), estimate("x" * 400), estimate("x" * 4000)
    assert 0 < short < medium < long
    assert long - medium == pytest.approx(900, abs=2)  # about four characters a token
    assert estimate("") > 0  # a message costs tokens even when empty


def test_token_estimate_counts_every_message_and_structured_content() -> None:
    one = estimate_prompt_tokens([{"role": "user", "content": "x" * 400}])
    two = estimate_prompt_tokens(
        [{"role": "system", "content": "x" * 400}, {"role": "user", "content": "x" * 400}]
    )
    assert two == 2 * one
    parts = [{"type": "text", "text": "y" * 800}]
    assert estimate_prompt_tokens([{"role": "user", "content": parts}]) > 200

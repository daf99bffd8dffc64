"""The webhook destinations file: defaults, durations, and refusals that name the file, line, destination and field."""

from __future__ import annotations

import base64

import pytest
from conftest import line_of

from schemas.webhooks import WebhooksFileError, parse_webhooks, signing_key

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
ENV = {"PUSH_SECRET": SECRET, "CRM_SECRET": SECRET}

GOOD = """
destinations:
  - name: push-service
    url: https://push.example.com/hooks/nudgeflow
    streams: [triggers.push, triggers.in_app]
    secret_env: PUSH_SECRET
  - name: crm
    url: http://crm.internal:8080/in?tenant=1
    streams: [audience_changes, suppressions]
    secret_env: CRM_SECRET
    timeout: 1500ms
    max_attempts: 3
    backoff: {start: 2s, cap: 1m}
    concurrency: 4
    queue: 50
    headers: {X-Tenant: shop-1}
close_timeout: 30s
"""


def refusal(text: str, environ: dict[str, str] = ENV) -> str:
    with pytest.raises(WebhooksFileError) as info:
        parse_webhooks(text, "hooks.yaml", environ)
    return str(info.value)


def test_a_good_file_gives_each_destination_its_settings_and_key():
    webhooks = parse_webhooks(GOOD, "hooks.yaml", ENV)
    push, crm = webhooks.destinations
    assert (push.timeout, push.max_attempts, push.backoff_start, push.backoff_cap) == (5.0, 8, 1.0, 300.0)
    assert (push.concurrency, push.queue, push.headers) == (16, 1000, ())
    assert (crm.timeout, crm.max_attempts, crm.backoff_start, crm.backoff_cap) == (1.5, 3, 2.0, 60.0)
    assert (crm.concurrency, crm.queue, crm.headers) == (4, 50, (("X-Tenant", "shop-1"),))
    assert crm.url == "http://crm.internal:8080/in?tenant=1", "the URL is kept as written"
    assert push.key == bytes(range(32))
    assert webhooks.close_timeout == 30.0
    assert webhooks.streams == {"triggers.push", "triggers.in_app", "audience_changes", "suppressions"}


@pytest.mark.parametrize(
    ("change", "needle", "field", "expected"),
    [
        (("triggers.push, triggers.in_app", "triggers.fax"), "triggers.fax", "streams", "unknown streams"),
        (("https://push.example.com", "ftp://push.example.com"), "ftp://", "url", "http:// or https://"),
        (("timeout: 1500ms", "timeout: 1500"), "timeout: 1500", "timeout", "a number needs a unit"),
        (("X-Tenant: shop-1", "webhook-id: x"), "webhook-id: x", "headers", "set by the sink itself"),
        (("max_attempts: 3", "max_attempts: 0"), "max_attempts: 0", "max_attempts", "greater than or equal to 1"),
        (("start: 2s, cap: 1m", "start: 2m, cap: 1m"), "start: 2m", "backoff", "cap must not be shorter"),
        (("queue: 50", "queue: 50\n    retries: 3"), "retries: 3", "retries", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_value_is_refused_naming_the_line_the_destination_and_the_field(change, needle, field, expected):
    text = GOOD.replace(*change)
    problems = refusal(text)
    assert problems.startswith(f"hooks.yaml:{line_of(text, needle)}: destination ")
    assert f" field '{field}': " in problems
    assert expected in problems


def test_two_destinations_of_one_name_and_an_empty_file_are_refused():
    assert "destination names used twice: ['crm']" in refusal(GOOD.replace("name: push-service", "name: crm"))
    assert "field 'destinations'" in refusal("destinations: []\n")
    assert "not valid YAML" in refusal("destinations: [\n")


def test_a_missing_secret_names_the_destination_and_the_variable():
    problems = refusal(GOOD, {"PUSH_SECRET": SECRET})
    line = line_of(GOOD, "secret_env: CRM_SECRET")
    where = f"hooks.yaml:{line}: destination 'crm' field 'secret_env'"
    assert problems == f"{where}: environment variable CRM_SECRET is not set"


@pytest.mark.parametrize("secret", ["whsec_not*base64!", "whsec_" + base64.b64encode(b"short").decode()])
def test_a_malformed_secret_is_refused_without_showing_it(secret):
    problems = refusal(GOOD, {**ENV, "CRM_SECRET": secret})
    assert "destination 'crm' field 'secret_env': the secret in environment variable CRM_SECRET" in problems
    assert secret not in problems and secret.removeprefix("whsec_") not in problems


def test_secrets_are_read_with_or_without_prefix_and_padding_and_never_shown():
    raw = bytes(range(40))
    encoded = base64.b64encode(raw).decode()
    assert signing_key("whsec_" + encoded) == signing_key(encoded) == signing_key(encoded.rstrip("=")) == raw
    webhooks = parse_webhooks(GOOD, "hooks.yaml", ENV)
    assert SECRET not in repr(webhooks) and repr(bytes(range(32))) not in repr(webhooks)

"""Redactor: every known secret becomes ``***``; short values are not secrets."""

from __future__ import annotations

import pytest

from enrich.redact import MASK, MIN_SECRET_LENGTH, Redactor


@pytest.mark.parametrize(
    ("secrets", "text", "expected"),
    [
        pytest.param(["s3cr3t-value"], "login with s3cr3t-value failed", "login with *** failed", id="one"),
        pytest.param(
            ["token-aaaa", "password-bbbb"],
            "token-aaaa then password-bbbb then token-aaaa",
            "*** then *** then ***",
            id="several-and-repeated",
        ),
        pytest.param(
            # "abcd" is inside "abcd-efgh": the longer one must be masked whole, not as "***-efgh".
            ["abcd", "abcd-efgh"],
            "full abcd-efgh, part abcd",
            "full ***, part ***",
            id="longest-first-added-short-first",
        ),
        pytest.param(
            ["abcd-efgh", "abcd"], "full abcd-efgh, part abcd", "full ***, part ***", id="longest-first-any-order"
        ),
        pytest.param(
            # the overlap is at the end: "1234-abcd" must not become "1234-***"
            ["abcd", "1234-abcd"],
            "x 1234-abcd y",
            "x *** y",
            id="longest-first-suffix",
        ),
        pytest.param(["abc", "ok", "x"], "abc ok x", "abc ok x", id="shorter-than-4-ignored"),
        pytest.param(["abcd"], "abcdabcd", "******", id="exactly-4-masked-back-to-back"),
        pytest.param(["a.b*c(d)"], "a.b*c(d) aXbbc(d)", "*** aXbbc(d)", id="regex-metacharacters-literal"),
        pytest.param(["Secret-Value"], "secret-value Secret-Value", "secret-value ***", id="case-sensitive"),
        pytest.param(["s3cr3t-value"], "", "", id="empty-text"),
        pytest.param([], "nothing s3cr3t-value", "nothing s3cr3t-value", id="no-secrets"),
        pytest.param([None, "", "s3cr3t-value"], "s3cr3t-value", "***", id="none-and-empty-skipped"),
        pytest.param(["pässwörd-ü"], "x pässwörd-ü y", "x *** y", id="non-ascii"),
    ],
)
def test_redact(secrets: list[str | None], text: str, expected: str) -> None:
    redactor = Redactor()
    for secret in secrets:
        redactor.add(secret)
    assert redactor.redact(text) == expected
    # The constructor takes the same list.
    assert Redactor(secrets).redact(text) == expected  # type: ignore[arg-type]


def test_short_values_are_not_remembered() -> None:
    assert MIN_SECRET_LENGTH == 4
    redactor = Redactor(["abc", "abcd", "yes", "1"])
    assert len(redactor) == 1
    assert "abcd" in redactor
    assert "abc" not in redactor
    assert redactor.redact("abc yes 1 abcd") == f"abc yes 1 {MASK}"


def test_duplicates_counted_once_and_repr_hides_values() -> None:
    redactor = Redactor(["s3cr3t-value", "s3cr3t-value", "other-secret"])
    assert len(redactor) == 2
    assert repr(redactor) == "Redactor(2 secrets)"
    assert "s3cr3t" not in repr(redactor)


def test_add_later_extends_masking() -> None:
    redactor = Redactor(["first-secret"])
    assert redactor.redact("first-secret second-secret") == "*** second-secret"
    redactor.add("second-secret")
    assert redactor.redact("first-secret second-secret") == "*** ***"


@pytest.mark.parametrize(
    ("secret", "text", "expected"),
    [
        # repr() doubles a backslash: the escaped form must be masked too
        pytest.param("pa\\ss-word", repr({"password": "pa\\ss-word"}), "{'password': '***'}", id="repr-backslash"),
        # JSON escapes a double quote
        pytest.param('pa"ss-word', '{"password": "pa\\"ss-word"}', '{"password": "***"}', id="json-quote"),
        # a secret placed in a URL is percent-encoded (as a cell value, or as literal text of the template)
        pytest.param("my secret/key", "x?key=my%20secret%2Fkey&a=1", "x?key=***&a=1", id="url-encoded-value"),
        pytest.param("my secret/key", "x?key=my%20secret/key&a=1", "x?key=***&a=1", id="url-encoded-literal"),
        # in a query string built by yarl a space is `+` and a plus is %2B
        pytest.param("my secret+key", "x?key=my+secret%2Bkey&a=1", "x?key=***&a=1", id="url-query-plus"),
        # a base64 key as enrich's params send it: `/` kept, `+` as %2B, `=` as %3D, space as +
        pytest.param("Qk3y/ZZ+a b==", "x?key=Qk3y/ZZ%2Ba+b%3D%3D&a=1", "x?key=***&a=1", id="query-param-base64"),
        # as APIs echo a key: `/` as `\/` (PHP), `+` as `\u002B` (.NET), every character percent-encoded,
        # encoded twice, in JSON inside JSON, as HTML entities
        pytest.param("KEY/9f9f+x", '{"k": "KEY\\/9f9f\\u002Bx"}', '{"k": "***"}', id="json-escaped-slash-and-plus"),
        pytest.param("abc/+1", "%61%62%63%2F%2b%31", "***", id="every-char-percent-encoded"),
        pytest.param("k3y/with+plus", "k3y%252Fwith%252Bplus", "***", id="percent-encoded-twice"),
        pytest.param('pw "9" é', '"\\"pw \\\\\\"9\\\\\\" \\\\u00e9\\""', '"\\"***\\""', id="json-in-json"),
        pytest.param("P@ss/w+rd", "P@ss&#x2F;w&#43;rd", "***", id="html-entities"),
        # a header's bytes that are not UTF-8 (kept as lone surrogates) neither crash nor leak
        pytest.param("tok\udce9\udcff1", "got tok\udce9\udcff1!", "got ***!", id="lone-surrogates"),
    ],
)
def test_escaped_forms_of_a_secret_are_masked(secret: str, text: str, expected: str) -> None:
    assert Redactor([secret]).redact(text) == expected


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("X-API-Key", True),
        ("api_key", True),
        ("ACME_PASSWORD", True),
        ("ACME_APITOKEN", True),  # a credential's word inside another word
        ("ACME_CLIENTSECRET", True),
        ("ACMEAPIKEY", True),
        ("Authorization", True),
        ("sig", True),
        ("API_USER", False),
        ("TENANT", False),
        ("author", False),  # `auth` only as a word
        ("monkey", False),  # `key` only as a word
        ("passport", False),
    ],
)
def test_which_names_are_a_credentials(name: str, secret: bool) -> None:
    from enrich.redact import secret_name

    assert secret_name(name) is secret
